"""Retries for object store requests: throttling (429, 503 SlowDown / ServerBusy), other 5xx answers, timeouts and
dropped connections are tried again with exponential backoff, waiting what the service's Retry-After (or Azure's
x-ms-retry-after-ms) asks for when it says; anything else fails at once. The services' own SDK retries are turned
off (azure.py, s3.py) so that this one loop decides, with the status and headers in view."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable, Mapping, TypeVar

T = TypeVar("T")
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HttpFailure:
    """What a failed request said: its HTTP status (None: no answer at all), the service's error code, how long it
    asked to wait, and whether trying again may help."""

    status: int | None
    code: str | None = None
    retry_after: float | None = None
    transient: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries per request, the first included
    base_delay: float = 0.5  # seconds before the second try; doubled each time (with jitter)
    max_delay: float = 30.0  # no wait is longer, whatever Retry-After says

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        return min(self.base_delay * 2 ** attempt * (0.5 + random.random()), self.max_delay)


def retry_after_seconds(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date) or x-ms-retry-after-ms; None if absent."""
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items()}
    milliseconds = lowered.get("x-ms-retry-after-ms")
    if milliseconds is not None:
        try:
            return float(milliseconds) / 1000
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(str(value)).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and the ones it was raised from (libraries translate errors and keep the original as cause)."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return chain


async def with_retries(call: Callable[[], Awaitable[T]], classify: Callable[[BaseException], HttpFailure | None],
                       policy: RetryPolicy) -> T:
    """`await call()`, tried again as the module docstring says; the last failure is raised as it was."""
    for attempt in range(policy.attempts):
        try:
            return await call()
        except Exception as exc:  # noqa: BLE001 - classified, then raised unless it is worth another try
            failure = classify(exc)
            if failure is None or not failure.transient or attempt + 1 >= policy.attempts:
                raise
            await asyncio.sleep(policy.delay(attempt, failure.retry_after))
    raise AssertionError("unreachable")

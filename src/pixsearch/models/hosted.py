"""Models behind an HTTP API (Azure AI Vision, OpenAI-compatible servers): the rules every call to them follows.

One `ServiceClient` per model and process sends the requests:
  * keys come from the environment (AZURE_AI_VISION_KEY, OPENAI_API_KEY) or the config file (HostedOptions), are
    sent in a header only, and never appear in a log line, an error message, a model name or the database: the
    client scrubs them from every message it builds (a service could echo one back);
  * a rate limit of its own (requests per minute; none by default) spaces the requests, a 429 pauses every thread
    of the client for the service's Retry-After (or an exponential backoff), 5xx answers, timeouts and dropped
    connections are retried with exponential backoff, at most `max_retries` times; then ServiceUnavailable;
  * at most `concurrency` requests are in flight at once, each bounded by `timeout_s`;
  * a 401 or 403 is ServiceAuthError, raised once and remembered: every later call fails at once, without a
    request, so an indexing run stops on it before any photo is marked failed;
  * any other 4xx is InputRefused (a ValueError): the service refused this input — one photo's failure.
Importing this module imports neither httpx nor numpy-heavy code; httpx is imported when a client is made.
"""
from __future__ import annotations

import email.utils
import io
import ipaddress
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

from PIL import Image

from .base import ModelNotAvailableError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
# A Retry-After longer than this is not waited for: the run stops and says when to try again (a quota, not a burst).
MAX_RETRY_AFTER_S = 600.0
_MESSAGE_CHARS = 300  # of a service's error message quoted in ours
# The query of a URL that is a credential: a photo's SAS (sig=) or presigned GET (X-Amz-Signature=, Signature=)
# sent to a service that fetches it (ImageAtURL). A service may quote a URL it could not fetch in its error.
SIGNED_QUERY = re.compile(r"\?[^\s\"'<>]*?\b(?:sig|x-amz-signature|signature|x-amz-credential|x-amz-security-token)="
                          r"[^\s\"'<>]*", re.IGNORECASE)


class ServiceError(RuntimeError):
    """A hosted model's service could not be used for this run (the message says why); nothing was marked failed."""


class ServiceUnavailable(ServiceError):
    """The service kept failing (5xx, timeouts, lost connections, throttling) after every retry."""


class ServiceAuthError(ModelNotAvailableError):
    """The service refused the key (401/403): nothing more is sent with it. A ModelNotAvailableError, so front doors
    report it as the one clear line they give a model that cannot be used."""


class InputRefused(ValueError):
    """The service refused one input (an image or text it calls invalid): a per-file failure, the run goes on."""


@dataclass(frozen=True)
class HostedOptions:
    """How hosted models are reached: keys (never stored, never shown: repr=False), the OpenAI-compatible base
    URL, and the client's manners. requests_per_minute None: no limit of ours (the service's 429s still pace us)."""

    azure_vision_key: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    requests_per_minute: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S

    @classmethod
    def from_environment(cls, **given: Any) -> "HostedOptions":
        """Options from `given` (e.g. the config file's settings), the blanks filled from the standard environment
        variables: AZURE_AI_VISION_KEY, OPENAI_API_KEY, OPENAI_BASE_URL."""
        values = {k: v for k, v in given.items() if v not in (None, "")}
        for name, env in (("azure_vision_key", "AZURE_AI_VISION_KEY"), ("openai_api_key", "OPENAI_API_KEY"),
                          ("openai_base_url", "OPENAI_BASE_URL")):
            if name not in values and os.environ.get(env):
                values[name] = os.environ[env]
        return cls(**values)

    @classmethod
    def from_settings(cls, settings: Any) -> "HostedOptions":
        """Options from pixsearch Settings (config file, PIXSEARCH_* variables), blanks from the environment."""
        return cls.from_environment(
            azure_vision_key=settings.azure_vision_key, openai_api_key=settings.openai_api_key,
            openai_base_url=settings.openai_base_url, requests_per_minute=settings.hosted_requests_per_minute,
            concurrency=settings.hosted_concurrency, timeout_s=settings.hosted_timeout,
        )


def check_endpoint(url: str, what: str) -> str:
    """A service URL keys may be sent to: https, or http to this machine only (a local server, tests); without a
    trailing '/'. ValueError otherwise — a key must never travel in clear text over a network."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials in the URL; the key comes from the environment")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(f"{what} {url!r}: use https (plain http is accepted for this machine only)")
    return url.strip().rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RateLimiter:
    """Spaces request starts by 60/per_minute seconds across threads, and holds every thread back during a pause
    (a 429's Retry-After). per_minute None: no spacing, pauses only."""

    def __init__(self, per_minute: float | None):
        if per_minute is not None and not per_minute > 0:
            raise ValueError("requests per minute must be a positive number")
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next, self._paused_until)
                if start <= now:
                    self._next = now + self.interval
                    return
            time.sleep(start - now)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ServiceClient:
    """JSON over HTTP to one service with the rules of this module. `secrets` are scrubbed from every message;
    `headers` (which carry them) are never logged. `requests_sent` counts every request that left this process."""

    def __init__(self, service: str, base_url: str, headers: Mapping[str, str], options: HostedOptions,
                 secrets: Sequence[str] = (), key_hint: str = "the key"):
        import httpx  # noqa: PLC0415 - only for hosted models

        self.service = service
        self.base_url = base_url
        self.key_hint = key_hint
        self.options = options
        self._secrets = [s for s in secrets if s]
        self._http = httpx.Client(base_url=base_url, headers=dict(headers), timeout=httpx.Timeout(options.timeout_s),
                                  follow_redirects=False)
        self._limiter = RateLimiter(options.requests_per_minute)
        self._slots = threading.BoundedSemaphore(max(1, options.concurrency))
        self._refused: ServiceAuthError | None = None
        self._count_lock = threading.Lock()
        self.requests_sent = 0

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return SIGNED_QUERY.sub("?***", text)

    def post(self, path: str, *, params: Mapping[str, str] | None = None, json_body: Any = None,
             content: bytes | None = None, content_type: str | None = None) -> Any:
        """POST and return the decoded JSON answer, retrying as the module docstring says."""
        import httpx  # noqa: PLC0415

        headers = {"Content-Type": content_type} if content_type else None
        last = "no attempt"
        for attempt in range(self.options.max_retries + 1):
            if self._refused is not None:
                raise self._refused
            self._limiter.wait()
            try:
                with self._slots:
                    with self._count_lock:
                        self.requests_sent += 1
                    response = self._http.post(path, params=params, json=json_body, content=content,
                                               headers=headers)
            except httpx.TimeoutException:
                last = f"no answer within {self.options.timeout_s:g} s"
                self._backoff(attempt, None, last)
                continue
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__})"
                self._backoff(attempt, None, last)
                continue
            status = response.status_code
            if 200 <= status < 300:
                try:
                    return response.json()
                except ValueError:
                    raise ServiceError(f"{self.service} answered {path} with something other than JSON") from None
            message = self._message(response)
            if status in (401, 403):
                self._refused = ServiceAuthError(
                    f"{self.service} refused the key (HTTP {status}{': ' + message if message else ''}); check "
                    f"{self.key_hint} and that the key belongs to {self.base_url}"
                )
                raise self._refused
            if status == 429 or status == 408 or status >= 500:
                last = f"HTTP {status}{': ' + message if message else ''}"
                wait = retry_after_seconds(response.headers.get("Retry-After"))
                if wait is not None and wait > MAX_RETRY_AFTER_S:
                    raise ServiceUnavailable(f"{self.service} asks to wait {wait:.0f} s before the next request "
                                             f"({last}): try again later, or lower the rate limit")
                if status == 429:
                    self._limiter.pause(wait if wait is not None else self._delay(attempt))
                    log.info("%s throttled the request (429); waiting %.1f s", self.service,
                             wait if wait is not None else self._delay(attempt))
                else:
                    self._backoff(attempt, wait, last)
                continue
            raise InputRefused(f"{self.service} refused the input (HTTP {status}{': ' + message if message else ''})")
        raise ServiceUnavailable(f"{self.service} failed {self.options.max_retries + 1} times in a row, last: "
                                 f"{self.scrub(last)}")

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn over items, in order, up to `concurrency` at a time (the requests themselves are bounded anyway)."""
        items = list(items)
        if len(items) <= 1 or self.options.concurrency <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.options.concurrency, len(items)),
                                thread_name_prefix="pixsearch-hosted") as pool:
            return list(pool.map(fn, items))

    def _delay(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.options.backoff_s * (2 ** attempt))

    def _backoff(self, attempt: int, wait: float | None, why: str) -> None:
        if attempt >= self.options.max_retries:
            return
        delay = wait if wait is not None else self._delay(attempt)
        log.info("%s: %s; retrying in %.1f s", self.service, self.scrub(why), delay)
        time.sleep(delay)

    def _message(self, response: Any) -> str:
        """The service's own error message (Azure's and OpenAI's {"error": {"code", "message"}}), scrubbed."""
        try:
            body = response.json()
        except ValueError:
            body = None
        text = ""
        if isinstance(body, dict):
            error = body.get("error", body)
            if isinstance(error, dict):
                parts = [str(error.get(k)) for k in ("code", "message") if error.get(k)]
                text = ": ".join(parts)
            elif isinstance(error, str):
                text = error
        elif response.headers.get("content-type", "").startswith("text/"):
            text = response.text
        return self.scrub(" ".join(text.split()))[:_MESSAGE_CHARS]

    def close(self) -> None:
        self._http.close()


# -- images --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageAtURL:
    """A photo a hosted model's service fetches itself, instead of being sent its bytes: a URL the service can read
    (an object-store photo's SAS or presigned URL). Only for models with `accepts_urls` (Azure AI Vision, the
    captioner). The URL may carry a credential (a SAS token): it is sent in the request body only, never logged,
    never stored; `image` is the decoded photo, for what is done locally (nothing of it is sent)."""

    url: str
    image: Image.Image | None = field(default=None, repr=False, compare=False)



@dataclass(frozen=True)
class ImageLimits:
    """What a service accepts, and what we send it. Sides must be more than min_side - 1 and at most max_side
    pixels, the file at most max_bytes; send_side bounds the long side we send (the models look at a few hundred
    pixels; the upload, the time and the transfer grow with the pixels)."""

    min_side: int
    max_side: int
    max_bytes: int
    send_side: int = 2048
    quality: int = 90


def encode_for_service(image: Image.Image, limits: ImageLimits, service: str) -> bytes:
    """An upright RGB image as JPEG within `limits`: scaled down to send_side (or as far as the short side allows),
    recompressed smaller until under max_bytes. InputRefused when no size fits (too small, or a sliver whose sides
    cannot both fit): one photo's failure, decided before any request."""
    from pixsearch.imaging import to_rgb  # noqa: PLC0415

    image = to_rgb(image)
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short < limits.min_side:
        raise InputRefused(f"the image is {width}x{height} px; {service} needs at least {limits.min_side} px a side")
    scale = min(1.0, limits.send_side / long)
    scale = max(scale, min(1.0, limits.min_side / short))  # a panorama keeps a usable short side
    scale = min(scale, limits.max_side / long)
    if round(short * scale) < limits.min_side:
        raise InputRefused(f"the image is {width}x{height} px: no size keeps both sides within {service}'s "
                           f"{limits.min_side}..{limits.max_side} px")
    quality = limits.quality
    while True:
        size = (max(limits.min_side, round(width * scale)), max(limits.min_side, round(height * scale)))
        scaled = image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        scaled.save(buffer, format="JPEG", quality=quality)
        data = buffer.getvalue()
        if len(data) <= limits.max_bytes:
            return data
        if quality > 60:
            quality -= 15
        else:
            scale *= 0.7
            if round(short * scale) < limits.min_side:
                raise InputRefused(f"the image cannot be made smaller than {limits.max_bytes} bytes for {service}")


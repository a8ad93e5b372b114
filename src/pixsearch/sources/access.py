"""Listing and reading objects: one client per service and environment (made on first use, from the environment
only), every request retried as retry.py says, every failure turned into an error that names no secret.

`read_object(url, options)` is a plain function of picklable values: a worker process or another machine calls it
with the same arguments and builds its own client from its own environment. `Downloads` starts reads ahead of use
on the filesystems' event loop, so that downloads overlap decoding and embedding without a thread per object.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from pixsearch.sources.entry import ObjectEntry, ReadOptions
from pixsearch.sources.errors import ObjectReadError, SourceError
from pixsearch.sources.retry import with_retries
from pixsearch.sources.urls import ObjectUrl, parse_url

T = TypeVar("T")
_lock = threading.Lock()
_sources: dict[tuple[str, str], Any] = {}


def source_for(scheme: str) -> Any:
    """The client for a scheme under the current environment: a change of credentials (or endpoint) in the
    environment gives a new one. Cached by a hash of the variables' values, so no secret is kept as a key."""
    from pixsearch.sources import azure, s3

    module = azure if scheme == "az" else s3
    fingerprint = hashlib.blake2b("\0".join(os.environ.get(name, "") for name in module.credential_variables())
                                  .encode(), digest_size=16).hexdigest()
    with _lock:
        source = _sources.get((scheme, fingerprint))
        if source is None:
            source = azure.AzureSource() if scheme == "az" else s3.S3Source()
            _sources[(scheme, fingerprint)] = source
        return source


def _run(source: Any, coroutine: Awaitable[T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, source.loop).result()


async def _retried(source: Any, options: ReadOptions, call: Callable[[], Awaitable[T]]) -> T:
    return await with_retries(lambda: asyncio.wait_for(call(), options.timeout), source.classify, options.retry)


@dataclass
class Listing:
    """What a root holds. `single`: the root names one object; `entries` then hold it and the objects beside it
    whose names start with its stem (its sidecars among them)."""

    root: str
    entries: list[ObjectEntry]
    single: bool = False


def list_objects(root: str, options: ReadOptions = ReadOptions()) -> Listing:
    """Every object under `root` (a folder-like prefix, or one object's URL). SourceError (CredentialsError for
    credentials) when the container or bucket cannot be listed: the caller must not take that for "empty"."""
    url = parse_url(root)
    source = source_for(url.scheme)

    async def listing() -> Listing:
        entries = await _retried(source, options, lambda: source.list(url, url.key + "/" if url.key else ""))
        if entries or not url.key or "." not in posixpath.basename(url.key):
            return Listing(str(url), entries)
        stem = posixpath.splitext(url.key)[0]
        siblings = await _retried(source, options, lambda: source.list(url, stem))
        if any(entry.url == str(url) for entry in siblings):
            return Listing(str(url), siblings, single=True)
        return Listing(str(url), [])

    try:
        return _run(source, listing())
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message without secrets
        error = source.source_error(exc, url)
        raise (error if isinstance(error, SourceError) else SourceError(f"{url}: {error}")) from None


# A prefix no photo has: listing it is one request that still needs the container and the right to list it.
_PROBE = ".pixsearch-access-check-0c5e2f7d"


def check_listing(root: str, options: ReadOptions = ReadOptions()) -> None:
    """Raise what list_objects would (SourceError; CredentialsError for credentials) when this environment cannot
    list `root`'s container or bucket — with one request, however many objects the root holds (a Ray worker's
    check before any work)."""
    url = parse_url(root)
    source = source_for(url.scheme)
    prefix = f"{url.key}/{_PROBE}" if url.key else _PROBE
    try:
        _run(source, _retried(source, options, lambda: source.list(url, prefix)))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message without secrets
        error = source.source_error(exc, url)
        raise (error if isinstance(error, SourceError) else SourceError(f"{url}: {error}")) from None


async def _read(source: Any, url: ObjectUrl, size_hint: int | None, options: ReadOptions) -> bytes:
    try:
        data = await _retried(source, options, lambda: source.read(url, size_hint, options))
    except Exception as exc:  # noqa: BLE001 - one object's failure, said without secrets
        raise ObjectReadError(str(source.source_error(exc, url))) from None
    if len(data) > options.max_bytes:
        raise ObjectReadError(f"larger than the {options.max_bytes / 1e6:.0f} MB limit (setting max_file_mb)")
    return data


def read_object(url: str, options: ReadOptions = ReadOptions(), size_hint: int | None = None) -> bytes:
    """The bytes of one object, at most options.max_bytes (ObjectReadError otherwise, or when it cannot be read).
    `size_hint`: its listed size, if known (an empty object is then not requested)."""
    parsed = parse_url(url)
    if size_hint == 0:
        return b""
    source = source_for(parsed.scheme)
    return _run(source, _read(source, parsed, size_hint, options))


def signed_read_url(url: str, expires_s: int = 3600) -> str | None:
    """A URL that lets whoever holds it GET this one object, and nothing else, for `expires_s` seconds: a read-only
    SAS (Azure: signed with the account key, or a user delegation key under azure-identity) or a presigned GET (S3).
    None when the environment's credentials cannot sign one (a SAS token of the user's own). The URL is a
    credential: it must never be logged, stored or shown."""
    parsed = parse_url(url)
    source = source_for(parsed.scheme)
    try:
        return _run(source, source.signed_read_url(parsed, expires_s))
    except Exception as exc:  # noqa: BLE001 - said without secrets
        raise source.source_error(exc, parsed) from None


def object_exists(url: str, options: ReadOptions = ReadOptions()) -> bool:
    """Whether an object is there now (one HEAD-like request); True when that cannot be told, so nothing is taken
    for deleted on a failed request."""
    parsed = parse_url(url)
    source = source_for(parsed.scheme)
    try:
        return _run(source, _retried(source, options, lambda: source.exists(parsed)))
    except Exception:  # noqa: BLE001 - unknown is not gone
        return True


class Downloads:
    """Reads started before they are needed, at most options.concurrency in flight per event loop. start(url)
    begins one (once); take(url) gives its bytes (or raises its ObjectReadError), reading it now if it was never
    started. Safe to use from several threads."""

    def __init__(self, options: ReadOptions = ReadOptions()):
        self.options = options
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._slots: dict[int, asyncio.Semaphore] = {}

    def start(self, url: str, size_hint: int | None = None) -> None:
        with self._lock:
            if url in self._futures or size_hint == 0:
                return
            parsed = parse_url(url)
            source = source_for(parsed.scheme)
            self._futures[url] = asyncio.run_coroutine_threadsafe(
                self._bounded(source, parsed, size_hint), source.loop)

    async def _bounded(self, source: Any, url: ObjectUrl, size_hint: int | None) -> bytes:
        slots = self._slots.setdefault(id(source.loop), asyncio.Semaphore(self.options.concurrency))
        async with slots:
            return await _read(source, url, size_hint, self.options)

    def take(self, url: str, size_hint: int | None = None) -> bytes:
        with self._lock:
            future = self._futures.pop(url, None)
        if future is None:
            return read_object(url, self.options, size_hint)
        return future.result()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._futures)

    def close(self) -> None:
        """Drop the reads nobody took (a run that stopped early)."""
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            future.cancel()

"""What a listing says about one object, and the read options a worker needs (no secrets: credentials are taken
from the environment where the object is read)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime

from pixsearch.limits import DEFAULT_MAX_FILE_BYTES
from pixsearch.sources.retry import RetryPolicy

_MD5_HEX = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ObjectEntry:
    """One object as listed. `mtime_ns`: its Last-Modified second (services give no finer time) with a 9-digit
    fingerprint of its ETag as the nanoseconds, so that comparing (size, mtime_ns) with an indexed row compares
    size, Last-Modified and ETag at once, with no column of its own. `md5`: the object's MD5 as the service
    states it (Azure's Content-MD5; an S3 ETag of a single-part upload), hex, None when it gives none. A claim
    until the bytes are read: an S3 ETag of an encrypted object looks like an MD5 and is not one."""

    url: str
    size: int
    mtime_ns: int
    etag: str | None = None
    md5: str | None = None

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def object_mtime_ns(last_modified: datetime | None, etag: str | None) -> int:
    seconds = int(last_modified.timestamp()) if last_modified is not None else 0
    fingerprint = int.from_bytes(hashlib.blake2b((etag or "").encode(), digest_size=8).digest(), "big") % 10**9
    return seconds * 10**9 + fingerprint


def md5_hex(value: bytes | bytearray | str | None) -> str | None:
    """An MD5 as lowercase hex from a raw digest (Azure) or a quoted hex ETag (S3); None for anything else (a
    multipart ETag `"...-3"`, an Azure ETag `"0x8D..."`)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex() if len(value) == 16 else None
    text = value.strip('"').lower()
    return text if _MD5_HEX.fullmatch(text) else None


@dataclass(frozen=True)
class ReadOptions:
    """How to list and read objects: plain values only (picklable, no secrets), so a worker on another machine
    re-creates its clients from its own environment with these."""

    max_bytes: int = DEFAULT_MAX_FILE_BYTES  # a read is capped here: one byte more is requested, to notice more
    concurrency: int = 16  # downloads in flight at once (Downloads)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 60.0  # seconds per request

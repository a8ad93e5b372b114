"""Thumbnails on disk: named by content hash and size only (never by anything a client sends), private to the
user, written atomically with unique temporary names, and bounded in total size (least recently used go first)."""
from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from pathlib import Path

from pixsearch.limits import THUMBNAIL_SIZES

log = logging.getLogger(__name__)

_NAME = re.compile(r"([0-9a-f]{32})-([0-9]{2,4})\.webp")
HEX_HASH = re.compile(r"[0-9a-f]{32}")


def thumbnail_name(content_hash: str, size: int) -> str:
    if not isinstance(content_hash, str) or not HEX_HASH.fullmatch(content_hash):
        raise ValueError("not a content hash")
    if size not in THUMBNAIL_SIZES:
        raise ValueError(f"thumbnail sizes are {', '.join(map(str, THUMBNAIL_SIZES))}")
    return f"{content_hash}-{size}.webp"


def private_folder(path: Path) -> Path:
    """Create `path` (and parents) readable by this user only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private_atomically(path: Path, data: bytes) -> None:
    """Write via a unique temporary file in the same folder (mode 0600), then rename over `path`: concurrent
    writers never share a temporary name, and readers see the old file or the new one, never a partial one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ThumbnailCache:
    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes: int | None = None  # measured on first write
        self._failing = False

    def get(self, name: str) -> bytes | None:
        if not _NAME.fullmatch(name):
            return None
        path = self.folder / name
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: evicted last
        except OSError:
            return None
        return data

    def put(self, name: str, data: bytes) -> None:
        """Keep a thumbnail. A cache folder that is full or read-only costs speed, not answers: the thumbnail is
        still served, and the problem logged once until a write succeeds again."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a thumbnail name: {name!r}")
        try:
            private_folder(self.folder)
            write_private_atomically(self.folder / name, data)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("cannot cache thumbnails in %s (%s): serving them uncached", self.folder,
                            exc.strerror or exc)
            return
        self._failing = False
        with self._lock:
            if self._bytes is None:
                self._bytes = self._measure()
            else:
                self._bytes += len(data)
            if self._bytes > self.max_bytes:
                self._evict()

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        for entry in os.scandir(self.folder):
            if _NAME.fullmatch(entry.name):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def _measure(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _evict(self) -> None:
        """Remove the least recently used thumbnails until the cache is at 80 % of its limit."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        target = int(self.max_bytes * 0.8)
        for _, size, path in files:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
        self._bytes = total

"""Photo files the server itself opens: uploads it stores, and the files thumbnails are made from.

The server only ever opens a photo file that ingest or an upload put in the index, and only when it lies inside a
folder the index was built from (its recorded roots, including its uploads folder). A stored path that points
elsewhere is treated as missing.
"""
from __future__ import annotations

import fcntl
import io
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from pixsearch.file_errors import storage_reason
from pixsearch.ingest import IngestReport
from pixsearch.ingest.decode import DecodeError, content_hash, decode_bytes
from pixsearch.ingest.objects import holds_content
from pixsearch.ingest.changes import apply_watched_changes
from pixsearch.ingest.formats import SUPPORTED_FORMATS_TEXT
from pixsearch.ingest.scan import photo_id
from pixsearch.service.captions import upgrade_photo_index
from pixsearch.service.core import IndexCore
from pixsearch.service.library import add_paths
from pixsearch.service.roots import PhotoNotFound, read_stored_photo
from pixsearch.service.thumbnails import HEX_HASH, private_folder, thumbnail_name
from pixsearch.store import SchemaError

log = logging.getLogger(__name__)

# MPO: a JPEG with more pictures in it (phones, 3D cameras), as Pillow names JPEGs that carry an MP index.
UPLOAD_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
                   "TIFF": ".tif", "HEIF": ".heic", "AVIF": ".avif"}


class StorageError(OSError):
    """A file could not be stored (read-only or full folder); the message names the folder. Nothing was kept."""


def uploads_folder(index: IndexCore) -> Path:
    return index.engine.settings.home / "uploads" / index.name


def add_image_bytes(index: IndexCore, filename: str, data: bytes) -> tuple[str, IngestReport]:
    """Index an uploaded image: checked by decoding, kept under PIXSEARCH_HOME/uploads/<index>/ (private to this
    user; named by its content hash, so re-uploading the same bytes is a no-op), then indexed like any file.

    All or nothing as clients see it: the file is written (atomically, fsynced) before its row commits and stays
    locked until then, and the files of uploads that never committed — their process killed in between, or the
    database lost — are removed by remove_unfinished_uploads, which the server runs at start and before the first
    upload to an index after it started or after a failed upload."""
    if index.spec.kind != "photos":
        raise SchemaError(f"index {index.name!r} is not a photo index: images cannot be added to it")
    settings = index.settings
    decoded = decode_bytes(data, max_pixels=settings.max_image_pixels)
    suffix = UPLOAD_SUFFIXES.get(decoded.format)
    if suffix is None:
        raise DecodeError(f"unsupported image format {decoded.format}; send {SUPPORTED_FORMATS_TEXT}")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename or "upload").stem).strip("-.")[:60] or "upload"
    folder = uploads_folder(index)
    try:
        private_folder(folder)
    except OSError as exc:
        raise StorageError(f"cannot store uploads in {folder}: {storage_reason(exc)}") from None
    checked = index.engine.uploads_checked
    if index.name not in checked:
        remove_unfinished_uploads(index)
        checked.add(index.name)
    prefix = decoded.content_hash[:16]
    try:
        with _held_upload(folder, prefix, f"{prefix}-{stem}{suffix}", data) as path:
            # a captioner the index has captions the upload too; its outage does not fail the upload
            report = add_paths(index, [path], prune=False, roots=[folder], caption_errors="warn")
    except BaseException:
        checked.discard(index.name)  # its file may be left without a row: look again before the next upload
        raise
    return photo_id(str(path)), report


@contextmanager
def _held_upload(folder: Path, prefix: str, name: str, data: bytes) -> Iterator[Path]:
    """The upload's file — the one already stored for the same bytes, or `data` written as folder/name — with a
    shared lock held on it for the duration, which tells remove_unfinished_uploads the upload is in progress."""
    while True:
        same_bytes = sorted(folder.glob(f"{prefix}-*"))
        if same_bytes:
            path = same_bytes[0]
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:  # removed as unfinished a moment ago: store it again
                continue
            fcntl.flock(fd, fcntl.LOCK_SH)
        else:
            path = folder / name
            fd = _write_locked(path, data)
        try:
            if _same_file(fd, path):
                yield path
                return
        finally:
            os.close(fd)
        # the file was removed (as unfinished) or replaced between finding and locking it: find it again


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _write_locked(path: Path, data: bytes) -> int:
    """Write `data` to `path` through a private temporary file, locked (shared) before it gets its name and synced
    to disk before it does; returns the open, locked descriptor. A full or read-only folder is a StorageError
    naming it, with nothing left behind."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StorageError(f"cannot store the upload in {path.parent}: {storage_reason(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except BaseException as exc:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot store the upload in {path.parent}: {storage_reason(exc)}") from None
        raise
    return fd


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_unfinished_uploads(index: IndexCore) -> list[str]:
    """Remove the uploaded files of `index` that have no row and no upload in progress (a process killed between
    storing a file and committing its row), and temporary files of killed writes; returns their names. A file is
    removed only under an exclusive lock and after checking again that it has no row, so an upload committing
    meanwhile keeps its file."""
    folder = uploads_folder(index)
    try:
        entries = [entry for entry in os.scandir(folder) if entry.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    keys = {entry.name: photo_id(entry.path) for entry in entries
            if not entry.name.startswith(".")}
    stored = set(index.get(list(keys.values()), vectors=False)) if keys else set()
    removed = []
    for entry in entries:
        key = keys.get(entry.name)
        if key in stored or (key is None and not entry.name.endswith(".tmp")):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # an upload in progress
            if key is not None and index.get([key], vectors=False):
                continue  # its upload committed after the first look
            if _same_file(fd, Path(entry.path)):
                os.unlink(entry.path)
                removed.append(entry.name)
        finally:
            os.close(fd)
    if removed:
        log.warning("removed %d file(s) of unfinished uploads from %s: %s", len(removed), folder,
                    ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


def thumbnail(index: IndexCore, key: str, size: int) -> bytes:
    """A WebP thumbnail (longest side `size`, one of limits.THUMBNAIL_SIZES) of a stored photo, cached by content
    hash and size."""
    if index.spec.kind != "photos":
        raise PhotoNotFound(f"index {index.name!r} holds no photos")
    row = index.store.select([key], ["path", "content_hash"]).get(key)
    if row is None:
        raise PhotoNotFound(f"no photo {key!r} in index {index.name!r}")
    stored_hash = row["content_hash"]
    cache = index.engine.thumbnails
    if isinstance(stored_hash, str) and HEX_HASH.fullmatch(stored_hash):
        cached = cache.get(thumbnail_name(stored_hash, size))
        if cached is not None:
            return cached
    try:
        data = read_stored_photo(index, row["path"])
        image = decode_bytes(data, max_pixels=index.settings.max_image_pixels, draft=(size, size)).image
    except DecodeError as exc:
        raise PhotoNotFound(f"the photo's file cannot be read: {exc}") from None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=80)
    # an object store photo's stored hash may be the MD5 its service states (ingest/objects.holds_content)
    digest = stored_hash if isinstance(stored_hash, str) and HEX_HASH.fullmatch(stored_hash) \
        and holds_content(data, stored_hash) else content_hash(data)
    cache.put(thumbnail_name(digest, size), buffer.getvalue())
    return buffer.getvalue()


def apply_folder_changes(index: IndexCore, changed: set[str], deleted: set[str], moved: list[tuple[str, str]], *,
                         roots: Sequence[Path], follow_symlinks: bool = False) -> IngestReport:
    """Bring the index up to date with one batch of what a folder watcher saw (ingest/watch.py), in its order:
    moves (the row follows its file, nothing embedded again), deletions (a folder's photos go with it), then new and
    changed files (indexed as `pixsearch index` would; a changed caption sidecar re-reads its photo's captions).
    Every path is checked as a scan of `roots` would check it (ingest/changes.py)."""
    upgrade_photo_index(index)
    changes = apply_watched_changes(index.store, changed, deleted, moved, roots=roots, follow_symlinks=follow_symlinks)
    report = add_paths(index, changes.to_index, prune=False, roots=roots, follow_symlinks=follow_symlinks) \
        if changes.to_index else IngestReport()
    report.moved += changes.moved
    report.removed += changes.removed
    return report

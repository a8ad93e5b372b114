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
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from PIL import Image

from pixsearch.file_errors import storage_reason
from pixsearch.ingest import IngestReport
from pixsearch.ingest.decode import DecodeError, content_hash, decode_bytes, read_file
from pixsearch.ingest.descriptions import is_sidecar_name, photos_for_sidecar
from pixsearch.ingest.formats import companion_key
from pixsearch.ingest.scan import inside, normal_path, photo_id, valid_utf8, walk_refusal
from pixsearch.service.captions import upgrade_photo_index
from pixsearch.service.thumbnails import HEX_HASH, private_folder, thumbnail_name
from pixsearch.store import SchemaError, update_settings
from pixsearch.store.photos import PhotoLocation, move_photos, paths_under, stored_states

if TYPE_CHECKING:
    from pixsearch.service.index import Index

log = logging.getLogger(__name__)

UPLOAD_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                   "HEIF": ".heic", "AVIF": ".avif"}


class PhotoNotFound(LookupError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _roots_json(paths: Sequence[Path], follow_symlinks: bool) -> list[dict[str, Any]]:
    return [{"path": os.path.realpath(normal_path(p)), "follow_symlinks": follow_symlinks}
            for p in paths]


def record_roots(index: "Index", paths: Sequence[Path], follow_symlinks: bool) -> None:
    """Remember the folders (or files) an index was built from: thumbnails open files inside them only."""
    current = indexed_roots(index)
    merged = {r["path"]: r for r in current}
    for root in _roots_json(paths, follow_symlinks):
        if os.path.exists(root["path"]):
            old = merged.get(root["path"])
            merged[root["path"]] = {**root, "follow_symlinks": root["follow_symlinks"] or bool(old and old["follow_symlinks"])}
    roots = sorted(merged.values(), key=lambda r: r["path"])
    if roots != current:
        index.spec = update_settings(index.db, index.name, {"roots": roots})
        index.table.spec = index.spec


def indexed_roots(index: "Index") -> list[dict[str, Any]]:
    """The index's recorded roots. Indexes made before roots were recorded get them from the folders of their
    photos (the outermost ones), once."""
    roots = index.spec.settings.get("roots")
    if roots is not None:
        return list(roots)
    with index.db.connection() as conn:
        folders = sorted(index.table.distinct_values(conn, "folder"))
    outermost: list[str] = []
    for folder in folders:
        if not any(folder == top or folder.startswith(top.rstrip(os.sep) + os.sep) for top in outermost):
            outermost.append(folder)
    derived = [{"path": os.path.realpath(f), "follow_symlinks": False} for f in outermost]
    index.spec = update_settings(index.db, index.name, {"roots": derived})
    index.table.spec = index.spec
    return derived


def photo_file(index: "Index", stored_path: str) -> tuple[str, bool]:
    """(path to open, whether a symbolic link may be followed) for a stored photo path, if it lies inside one of the
    index's roots; PhotoNotFound otherwise. The check is on the real location of the file's folder, so `..` and
    folder links cannot lead outside; the file itself is then opened without following links unless its root was
    indexed with --follow-symlinks (and read_file accepts only a regular file either way)."""
    normal = os.path.normpath(stored_path)
    if not os.path.isabs(normal):
        raise PhotoNotFound("the photo's file is not inside the folders this index was built from")
    real_folder = os.path.realpath(os.path.dirname(normal))
    real_file = os.path.join(real_folder, os.path.basename(normal))
    linked = False
    for root in indexed_roots(index):
        top, follow = root["path"], bool(root.get("follow_symlinks"))
        if inside(real_file, top) or (follow and inside(normal, top)):
            try:
                is_link = stat.S_ISLNK(os.lstat(real_file).st_mode)
            except OSError:
                raise PhotoNotFound("the photo's file is missing") from None
            if is_link and not follow:
                linked = True
                continue
            return real_file, follow
    if linked:
        raise PhotoNotFound("the photo's file is now a symbolic link, not followed (the index was built without "
                            "--follow-symlinks)")
    raise PhotoNotFound("the photo's file is not inside the folders this index was built from")


def read_stored_photo(index: "Index", stored_path: str) -> bytes:
    """The bytes of a stored photo's file, for everything that opens one again after ingest (thumbnails, regions,
    reindex): opened only inside the index's roots and not through a link unless its root follows links
    (photo_file: PhotoNotFound otherwise), a regular file within the size limit (read_file: DecodeError)."""
    path, follow = photo_file(index, stored_path)
    return read_file(path, max_bytes=index.engine.settings.max_file_bytes, follow_symlinks=follow)


class StorageError(OSError):
    """A file could not be stored (read-only or full folder); the message names the folder. Nothing was kept."""


def uploads_folder(index: "Index") -> Path:
    return index.engine.settings.home / "uploads" / index.name


def add_image_bytes(index: "Index", filename: str, data: bytes) -> tuple[str, IngestReport]:
    """Index an uploaded image: checked by decoding, kept under PIXSEARCH_HOME/uploads/<index>/ (private to this
    user; named by its content hash, so re-uploading the same bytes is a no-op), then indexed like any file.

    All or nothing as clients see it: the file is written (atomically, fsynced) before its row commits and stays
    locked until then, and the files of uploads that never committed — their process killed in between, or the
    database lost — are removed by remove_unfinished_uploads, which the server runs at start and before the first
    upload to an index after it started or after a failed upload."""
    if index.spec.kind != "photos":
        raise SchemaError(f"index {index.name!r} is not a photo index: images cannot be added to it")
    settings = index.engine.settings
    decoded = decode_bytes(data, max_pixels=settings.max_image_pixels)
    suffix = UPLOAD_SUFFIXES.get(decoded.format)
    if suffix is None:
        raise DecodeError(f"unsupported image format {decoded.format}; send JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC "
                          "or AVIF")
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
            report = index.add_paths([path], prune=False, roots=[folder])
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


def remove_unfinished_uploads(index: "Index") -> list[str]:
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


def thumbnail(index: "Index", key: str, size: int) -> bytes:
    """A WebP thumbnail (longest side `size`, one of limits.THUMBNAIL_SIZES) of a stored photo, cached by content
    hash and size."""
    if index.spec.kind != "photos":
        raise PhotoNotFound(f"index {index.name!r} holds no photos")
    with index.db.connection() as conn:
        row = index.table.select(conn, [key], ["path", "content_hash"]).get(key)
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
        image = decode_bytes(data, max_pixels=index.engine.settings.max_image_pixels, draft=(size, size)).image
    except DecodeError as exc:
        raise PhotoNotFound(f"the photo's file cannot be read: {exc}") from None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=80)
    cache.put(thumbnail_name(content_hash(data), size), buffer.getvalue())
    return buffer.getvalue()


def apply_folder_changes(index: "Index", changed: set[str], deleted: set[str], moved: list[tuple[str, str]], *,
                         roots: Sequence[Path], follow_symlinks: bool = False) -> IngestReport:
    """Bring the index up to date with one batch of what a folder watcher saw (ingest/watch.py), in its order:
    moves (the row follows its file, nothing embedded again), deletions (a folder's photos go with it), then new and
    changed files (indexed as `pixsearch index` would; a changed caption sidecar re-reads its photo's captions).

    Every path is checked as a scan of `roots` would check it (scan.walk_refusal): a file behind a symbolic link
    (without follow_symlinks) or outside the roots is skipped, and a row whose file moved there is removed."""
    upgrade_photo_index(index)
    changed = {normal_path(p) for p in changed}
    deleted = {normal_path(p) for p in deleted}
    moved = [(normal_path(src), normal_path(dest)) for src, dest in moved]
    for path in [*deleted, *(p for move in moved for p in move), *list(changed)]:
        if is_sidecar_name(path):  # a sidecar stands for its photos
            changed.update(photos_for_sidecar(path))
            changed.discard(path)
    moves = []
    photo_moves = [(src, dest) for src, dest in moved if not is_sidecar_name(dest)]
    with index.db.connection() as conn:
        stored = stored_states(conn, index.table, [photo_id(src) for src, _ in photo_moves])
    gone: list[str] = []
    for src, dest in photo_moves:
        state = stored.get(photo_id(src))
        if state is not None and walk_refusal(dest, roots, follow_symlinks) is not None:
            gone.append(state.id)  # moved where a scan would not reach it: the row goes, the skip is reported below
            changed.add(dest)
            continue
        try:
            st = os.stat(dest) if state is not None and valid_utf8(dest) else None
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            changed.add(dest)  # never indexed, or gone again: whatever is there now is read as a new file
            continue
        moves.append((state.id, PhotoLocation(photo_id(dest), dest, os.path.dirname(dest), os.path.basename(dest),
                                              st.st_size, st.st_mtime_ns, companion_key(dest))))
        changed.add(dest)  # re-checked below: unchanged, unless its sidecars differ now
    with index.db.connection() as conn:
        move_photos(conn, index.table, moves)
        for path in deleted:
            if is_sidecar_name(path):
                continue
            gone.append(photo_id(path))
            gone += [key for key, _ in paths_under(conn, index.table, path.rstrip(os.sep) + os.sep)]
        removed = index.table.delete(conn, gone)
    present = sorted(p for p in changed if os.path.isfile(p) and not is_sidecar_name(p))
    report = index.add_paths(present, prune=False, roots=roots, follow_symlinks=follow_symlinks) if present \
        else IngestReport()
    report.moved += len(moves)
    report.removed += removed
    return report

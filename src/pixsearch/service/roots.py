"""The folders an index was built from: the only places the server opens photo files (thumbnails, regions,
reindex). Roots are recorded as real paths; a stored photo path is opened only when its real location lies inside
one of them. Object store roots (az://, s3://) are recorded by their URL only (never a credential), and a stored
object is read only when its URL lies under one of them, with the server's own credentials from its environment:
the API never fetches a location a client names."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable, Sequence

from pixsearch.ingest.decode import DecodeError, read_file
from pixsearch.ingest.scan import inside, normal_path
from pixsearch.ingest.stage import PhotoNotFound
from pixsearch.service.core import IndexCore
from pixsearch.sources import (ObjectReadError, ReadOptions, SourceError, is_object_url, normal_url, read_object,
                               signed_read_url, url_inside)

__all__ = ["PhotoNotFound", "indexed_roots", "photo_file", "photo_urls", "read_stored_photo", "record_roots",
           "stored_object"]


def _roots_json(paths: Sequence[Path | str], follow_symlinks: bool) -> list[dict[str, Any]]:
    return [{"path": normal_url(p), "follow_symlinks": False} if is_object_url(p) else
            {"path": os.path.realpath(normal_path(p)), "follow_symlinks": follow_symlinks} for p in paths]


def record_roots(index: IndexCore, paths: Sequence[Path | str], follow_symlinks: bool) -> None:
    """Remember the folders (or files, or object store URLs) an index was built from: thumbnails open files inside
    them only."""
    current = indexed_roots(index)
    merged = {r["path"]: r for r in current}
    for root in _roots_json(paths, follow_symlinks):
        if is_object_url(root["path"]) or os.path.exists(root["path"]):
            old = merged.get(root["path"])
            merged[root["path"]] = {**root, "follow_symlinks": root["follow_symlinks"] or bool(old and old["follow_symlinks"])}
    roots = sorted(merged.values(), key=lambda r: r["path"])
    if roots != current:
        index.update_settings({"roots": roots})


def indexed_roots(index: IndexCore) -> list[dict[str, Any]]:
    """The index's recorded roots. Indexes made before roots were recorded get them from the folders of their
    photos (the outermost ones), once."""
    roots = index.spec.settings.get("roots")
    if roots is not None:
        return list(roots)
    folders = sorted(index.store.distinct_values("folder"))
    outermost: list[str] = []
    for folder in folders:
        if not any(folder == top or folder.startswith(top.rstrip(os.sep) + os.sep) for top in outermost):
            outermost.append(folder)
    derived = [{"path": f if is_object_url(f) else os.path.realpath(f), "follow_symlinks": False} for f in outermost]
    index.update_settings({"roots": derived})
    return derived


def photo_file(index: IndexCore, stored_path: str) -> tuple[str, bool]:
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


def read_stored_photo(index: IndexCore, stored_path: str) -> bytes:
    """The bytes of a stored photo's file, for everything that opens one again after ingest (thumbnails, regions,
    reindex): opened only inside the index's roots and not through a link unless its root follows links
    (photo_file: PhotoNotFound otherwise), a regular file within the size limit (read_file: DecodeError)."""
    if is_object_url(stored_path):
        url = stored_object(index, stored_path)
        try:
            return read_object(url, ReadOptions(max_bytes=index.settings.max_file_bytes,
                                                concurrency=index.settings.download_concurrency))
        except ObjectReadError as exc:
            raise DecodeError(str(exc)) from None
    path, follow = photo_file(index, stored_path)
    return read_file(path, max_bytes=index.settings.max_file_bytes, follow_symlinks=follow)


def stored_object(index: IndexCore, stored_path: str) -> str:
    """A stored photo's object URL, if it lies under one of the index's object store roots; PhotoNotFound
    otherwise (whatever a row says, only what was indexed from a recorded root is fetched)."""
    try:
        url = normal_url(stored_path)
    except ValueError:
        url = None
    parts = url.split("://", 1)[1].split("/") if url is not None else []
    # "." and ".." are plain characters in an object key, but HTTP clients may resolve them as a path: never sent
    if url is not None and url == stored_path and not any(part in ("", ".", "..") for part in parts):
        for root in indexed_roots(index):
            if is_object_url(root["path"]) and url_inside(url, root["path"]):
                return url
    raise PhotoNotFound("the photo's object is not under the object store locations this index was built from")


def photo_urls(index: IndexCore, given: Callable[[str], str | None] | None = None
               ) -> Callable[[str], str | None] | None:
    """The photo_url for ingest and captioning: `given`, else, with the setting send_photo_urls, a short-lived
    read-only URL (sources.signed_read_url) of each object-store photo under the index's roots, for a hosted model
    or captioner that fetches photos itself. None for a local photo, or when no URL can be signed: its bytes are
    sent then. The URLs are credentials: they go into the service's request body and nowhere else."""
    if given is not None or not index.settings.send_photo_urls:
        return given

    def signed(stored_path: str) -> str | None:
        if not is_object_url(stored_path):
            return None
        try:
            return signed_read_url(stored_object(index, stored_path))
        except (PhotoNotFound, SourceError, ObjectReadError):
            return None

    return signed

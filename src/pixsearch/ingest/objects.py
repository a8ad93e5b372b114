"""Photos in object stores, for ingest: roots listed into found files, an object read with its sidecars, rows of
deleted objects pruned, and whether an indexed object is gone — what scan.py, descriptions.py and changes.py do
for folders. sources/ does the talking to the services; this module decides what the objects mean.

An object's row is a file's row: `path` is its URL, `size_bytes` its size, `mtime_ns` its Last-Modified with a
fingerprint of its ETag (sources.entry), so an unchanged object is told from the listing alone and never
downloaded. Its content hash is the MD5 the service states when the bytes read have that MD5 (then a renamed
object — copy + delete, as object stores rename — is recognised from the listing, without downloading it), and
the usual content hash of the bytes otherwise. Sidecars are sibling objects (`photo.jpg.xmp`, `photo.xmp`,
`photo.txt`), found in the same listing.
"""
from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from PIL import Image

from pixsearch.ingest.changes import gone_from_disk
from pixsearch.ingest.decode import DecodeError, content_hash
from pixsearch.ingest.descriptions import (MAX_SIDECAR_BYTES, Descriptions, read_descriptions, read_sidecar_files,
                                           sidecar_paths)
from pixsearch.ingest.scan import FoundFile, ScanResult, is_image_name, photo_id, scan
from pixsearch.sources import (Downloads, ObjectEntry, ObjectReadError, ReadOptions, is_object_url, list_objects,
                               normal_url, object_exists, read_object, url_inside)
from pixsearch.store import IndexStore

__all__ = ["ObjectFile", "SourcesScan", "describe_found", "holds_content", "object_digest", "object_gone_check",
           "prefetching", "prune_objects", "read_object_file", "read_options", "read_sidecars", "scan_sources",
           "split_roots"]


@dataclass(frozen=True)
class ObjectFile(FoundFile):
    """A photo in an object store, as listed: its stated MD5 (if any) and its sidecar objects, in precedence order."""

    md5: str | None = None
    sidecars: tuple[ObjectEntry, ...] = ()


@dataclass
class SourcesScan(ScanResult):
    """A scan of folders and object store roots together. `listed`: the object roots listed in full (their rows
    may be pruned by what the listing lacks); `listed_urls`: every object those listings hold."""

    listed: list[str] = field(default_factory=list)
    single: list[str] = field(default_factory=list)  # roots that name one object
    listed_urls: set[str] = field(default_factory=set)


def split_roots(roots: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """(local files and folders, object store URLs in their normal spelling). A URL must be given as text:
    Path("az://c/p") has already lost a slash."""
    local, remote = [], []
    for root in roots:
        if is_object_url(root):
            remote.append(normal_url(root))
        else:
            local.append(Path(root))
    return local, remote


def read_options(max_file_bytes: int, concurrency: int = 16) -> ReadOptions:
    return ReadOptions(max_bytes=max_file_bytes, concurrency=concurrency)


def _hidden(url: str, root: str) -> bool:
    """A name, or a "folder" between the root and it, starting with "." (as the folder walk skips them)."""
    rest = url[len(root):].lstrip("/") if url.startswith(root) else posixpath.basename(url)
    return any(part.startswith(".") for part in rest.split("/"))


def _sidecar_state(sidecars: Sequence[ObjectEntry]) -> str | None:
    if not sidecars:
        return None
    seen = "|".join(f"{entry.name}:{entry.size}:{entry.mtime_ns}" for entry in sidecars)
    return hashlib.blake2b(seen.encode("utf-8"), digest_size=8).hexdigest()


def scan_sources(roots: Sequence[str | Path], *, within: Sequence[Path] | None = None, follow_symlinks: bool = False,
                 max_file_bytes: int, concurrency: int = 16) -> SourcesScan:
    """scan() of the local roots, and a listing of each object store root (one request per 1,000 objects). A root
    that cannot be listed stops the run (sources.SourceError, naming the variable to set for credentials): taking
    it for empty would prune its photos."""
    local, remote = split_roots(roots)
    result = SourcesScan()
    if local:
        walked = scan(local, within=within, follow_symlinks=follow_symlinks, max_file_bytes=max_file_bytes)
        result.found, result.failures, result.skipped, result.links = (walked.found, walked.failures, walked.skipped,
                                                                       walked.links)
    options = read_options(max_file_bytes, concurrency)
    found: dict[str, FoundFile] = {f.path: f for f in result.found}
    for root in remote:
        listing = list_objects(root, options)
        (result.single if listing.single else result.listed).append(root)
        entries = {entry.url: entry for entry in listing.entries}
        result.listed_urls.update(entries)
        for url, entry in entries.items():
            if listing.single and url != root:
                continue
            if not is_image_name(entry.name) or _hidden(url, root):
                continue
            if entry.size > max_file_bytes:
                result.failures.append((url, f"larger than the {max_file_bytes // 1_000_000} MB limit "
                                             "(setting max_file_mb)"))
                continue
            sidecars = tuple(entries[c] for c in dict.fromkeys(sidecar_paths(url)) if c in entries)
            found[url] = ObjectFile(url, entry.size, entry.mtime_ns, _sidecar_state(sidecars), md5=entry.md5,
                                    sidecars=sidecars)
    result.found = sorted(found.values(), key=lambda f: f.path)
    return result


def read_object_file(file: ObjectFile, options: ReadOptions, downloads: Downloads | None = None) -> bytes:
    """The photo object's bytes (started ahead by `downloads` when given); ObjectReadError when it cannot be read
    or is not the object that was listed."""
    data = downloads.take(file.path, file.size_bytes) if downloads is not None \
        else read_object(file.path, options, file.size_bytes)
    if len(data) != file.size_bytes:
        raise ObjectReadError("the object changed since it was listed (being replaced?): index it again")
    return data


def object_digest(file: ObjectFile, data: bytes) -> str:
    """The photo's content hash: the service's MD5 when the bytes have it (see the module docstring)."""
    if file.md5 is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() == file.md5:
        return file.md5
    return content_hash(data)


def holds_content(data: bytes, digest: str) -> bool:
    """Whether `data` are the bytes a row's content hash names: the usual content hash, or for an object-store
    photo the MD5 its service stated (object_digest)."""
    return content_hash(data) == digest or hashlib.md5(data, usedforsecurity=False).hexdigest() == digest


def _sidecar_bytes(file: ObjectFile, options: ReadOptions) -> list[tuple[str, bytes | DecodeError]]:
    out: list[tuple[str, bytes | DecodeError]] = []
    for entry in file.sidecars:
        if entry.size > MAX_SIDECAR_BYTES:
            out.append((entry.name, DecodeError(f"larger than the {MAX_SIDECAR_BYTES // 1_000_000} MB limit")))
            continue
        try:
            out.append((entry.name, read_object(entry.url, ReadOptions(max_bytes=MAX_SIDECAR_BYTES,
                                                                       retry=options.retry), entry.size)))
        except ObjectReadError as exc:
            out.append((entry.name, DecodeError(str(exc))))
    return out


def read_sidecars(file: FoundFile, options: ReadOptions, *, follow_symlinks: bool = False
                  ) -> list[tuple[str, bytes | DecodeError]]:
    """The photo's sidecars (files beside it, or sibling objects) read, as read_descriptions' `sidecars` takes
    them: the photo can then be described wherever it is decoded (on a Ray worker that cannot see its folder)."""
    if isinstance(file, ObjectFile):
        return _sidecar_bytes(file, options)
    return read_sidecar_files(file.path, follow_symlinks=follow_symlinks)


def describe_found(file: FoundFile, options: ReadOptions, image: Image.Image | None = None,
                   exif: Image.Exif | None = None, *, follow_symlinks: bool = False,
                   data: bytes | None = None) -> Descriptions:
    """read_descriptions for a found file, local or in an object store (its sidecars read; the photo itself read
    too when neither `image` nor `data` is given, for its embedded metadata)."""
    sidecars = read_sidecars(file, options, follow_symlinks=follow_symlinks)
    if isinstance(file, ObjectFile) and image is None and data is None:
        try:
            data = read_object_file(file, options)
        except ObjectReadError as exc:
            described = read_descriptions(file.path, None, exif, sidecars=sidecars, data=b"")
            described.warnings.append(f"file: not read: {exc}")
            return described
    return read_descriptions(file.path, image, exif, sidecars=sidecars, data=data)


def prefetching(items: Iterable[Any], file_of: Callable[[Any], FoundFile | None], downloads: Downloads
                ) -> Iterator[Any]:
    """The items, unchanged, with the downloads of the next `concurrency` object store photos among them started
    before each is handed on: the image stage reads them while earlier ones are decoded and embedded."""
    items = list(items)
    ahead = downloads.options.concurrency
    started = 0
    for index, item in enumerate(items):
        while started < len(items) and started <= index + ahead:
            file = file_of(items[started])
            if isinstance(file, ObjectFile):
                downloads.start(file.path, file.size_bytes)
            started += 1
        yield item


def object_gone_check(scanned: SourcesScan, options: ReadOptions) -> Callable[[str], bool]:
    """Whether an indexed photo's file or object is gone for sure (for taking its row over by content hash): an
    object under a root listed in this run is gone when the listing lacks it; one elsewhere is asked for."""
    def gone(path: str) -> bool:
        if not is_object_url(path):
            return gone_from_disk(path)
        if path in scanned.listed_urls:
            return False
        if any(url_inside(path, root) for root in scanned.listed):
            return True
        return not object_exists(path, options)

    return gone


def prune_objects(store: IndexStore, scanned: SourcesScan) -> int:
    """Remove the rows of objects under the listed roots that the listings no longer hold (deleted, or renamed to
    something that is not a photo); how many. A root that names one object loses its row when it is gone."""
    gone: list[str] = []
    for root in scanned.listed:  # a photo listed but not indexed this run (too large now) keeps its row, as on disk
        gone += [key for key, path in store.paths_under(root + "/") if path not in scanned.listed_urls]
        if store.stored_states([photo_id(root)]) and root not in scanned.listed_urls:
            gone.append(photo_id(root))
    return store.delete(gone)

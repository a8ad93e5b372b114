"""Find image files under the given paths: regular files only, symbolic links only when asked, sizes bounded."""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pixsearch.ingest.decode import file_kind
from pixsearch.ingest.descriptions import is_sidecar_name, sidecar_paths
from pixsearch.ingest.formats import IMAGE_SUFFIXES, available_suffixes
from pixsearch.limits import DEFAULT_MAX_FILE_BYTES
from pixsearch.sources.urls import is_object_url, normal_url

# Pillow's own formats, and HEIF/AVIF when pillow-heif (or a Pillow with libavif) can open them.
SCANNED_SUFFIXES = IMAGE_SUFFIXES | available_suffixes()
SYMLINK_SKIPPED = "symbolic link: skipped (--follow-symlinks indexes what links point to)"
OUTSIDE_ROOTS = "not inside the folders being indexed: skipped"


@dataclass(frozen=True)
class FoundFile:
    path: str
    size_bytes: int
    mtime_ns: int
    sidecar_state: str | None = None  # see sidecar_state(): changes when a caption sidecar appears, changes, goes

    @property
    def id(self) -> str:
        return photo_id(self.path)


@dataclass
class ScanResult:
    """Image files found, files that should have been indexed but cannot be (failures), and entries passed over on
    purpose (skipped: symbolic links without --follow-symlinks, FIFOs and devices named like images). `links`: the
    symbolic links (to files or folders) that were not followed: nothing behind them belongs in the index."""

    found: list[FoundFile] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)


def normal_path(path: str | os.PathLike) -> str:
    """A path's one spelling: absolute, `~` expanded, `.`, `..` and doubled separators removed lexically, symbolic
    links not followed (`/a/home/../p` is `/a/p`, as `cd` has it). Paths are stored and compared in this form, and
    photo_id keys rows by it: one file, one row, however its folder was typed. An object store URL (az://, s3://)
    is a path too: its one spelling is sources.normal_url's."""
    if is_object_url(path):
        return normal_url(path)
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def photo_id(path: str) -> str:
    """A stable key per file (its normal_path): re-indexing a changed file updates its row instead of adding one."""
    return hashlib.blake2b(normal_path(path).encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (both normal paths; compared as text, no file is looked at)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def walk_refusal(path: str | os.PathLike, roots: Iterable[str | os.PathLike], follow_symlinks: bool) -> str | None:
    """Why walking `roots` as scan() does would not reach `path`, or None when it would: `path` lies outside every
    root, or (unless `follow_symlinks`) it or a folder between its root and it is a symbolic link, which the walk
    skips. What a folder watcher reports is checked with this rather than taken as a root named by the user (roots
    may be links; what is found inside them may not)."""
    path = normal_path(path)
    refusal = OUTSIDE_ROOTS
    for root in map(normal_path, roots):
        if not inside(path, root):
            continue
        link = None if follow_symlinks else _first_link_below(root, path)
        if link is None:
            return None
        refusal = SYMLINK_SKIPPED if link == path else f"behind the symbolic link {link}: skipped " \
                                                       "(--follow-symlinks indexes what links point to)"
    return refusal


def _first_link_below(root: str, path: str) -> str | None:
    """The first symbolic link on the way from `root` (not itself checked) down to `path` (checked), if any. A part
    that cannot be looked at ends the search: reading the file then reports what is wrong with it."""
    current = root
    for part in os.path.relpath(path, root).split(os.sep):
        if part == ".":
            break
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return current
        except OSError:
            return None
    return None


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in SCANNED_SUFFIXES and not name.startswith(".")


def sidecar_state(path: str, listing: frozenset[str] | None = None) -> str | None:
    """A short digest of the photo's caption sidecars (names, sizes, times), None when it has none: ingest compares
    it to re-read captions whose sidecar changed while the photo did not. `listing`: the names in the photo's
    folder, when the caller has them (then only sidecars in it are looked at)."""
    seen = []
    for candidate in sidecar_paths(path):
        if listing is not None and os.path.basename(candidate) not in listing:
            continue
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            seen.append(f"{os.path.basename(candidate)}:{st.st_size}:{st.st_mtime_ns}")
    if not seen:
        return None
    return hashlib.blake2b("|".join(seen).encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def valid_utf8(path: str) -> bool:
    """Whether a path (surrogate-escaped by Python for undecodable bytes) is valid UTF-8: PostgreSQL stores text."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan(
    roots: Iterable[Path], *, within: Iterable[Path] | None = None, follow_symlinks: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> ScanResult:
    """The image files under `roots` (files or folders, walked recursively), chosen by extension; whether they
    really are images is found out when they are decoded. Roots named explicitly are used even if they are links.
    Inside them, symbolic links (to files or folders) are skipped unless `follow_symlinks`, and then only links to
    regular files and folders are followed, each folder once (link cycles end). Every path is in normal_path form.

    `within`: the folders `roots` were found in (what a folder watcher reported): each is then treated as the walk
    of those folders would treat it, skipped when the walk would not reach it (walk_refusal), never as a root."""
    result = ScanResult()
    found: dict[str, FoundFile] = {}
    folders = [normal_path(folder) for folder in within] if within is not None else None

    def consider(path: str, explicit: bool = False, listing: frozenset[str] | None = None) -> None:
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                if not (follow_symlinks or explicit):
                    result.skipped.append((path, SYMLINK_SKIPPED))
                    result.links.append(path)
                    return
                st = os.stat(path)
        except OSError as exc:
            result.failures.append((path, f"cannot read file information: {exc.strerror or exc}"))
            return
        if not stat.S_ISREG(st.st_mode):
            result.skipped.append((path, f"not a regular file ({file_kind(st.st_mode)})"))
        elif not valid_utf8(path):
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            result.failures.append((shown, "the file name is not valid UTF-8: rename the file (paths are stored as text)"))
        elif st.st_size > max_file_bytes:
            result.failures.append((path, f"larger than the {max_file_bytes // 1_000_000} MB limit (setting max_file_mb)"))
        else:
            found[path] = FoundFile(path, st.st_size, st.st_mtime_ns, sidecar_state(path, listing))

    for root in roots:
        root = Path(normal_path(root))
        if folders is not None:
            refusal = walk_refusal(root, folders, follow_symlinks)
            if refusal is not None:
                result.skipped.append((str(root), refusal))
                continue
        if not root.exists():
            result.failures.append((str(root), "no such file or folder"))
            continue
        if not root.is_dir():
            consider(str(root), explicit=folders is None)
            continue
        _walk(root, follow_symlinks, consider, result)
    result.found = sorted(found.values(), key=lambda f: f.path)
    return result


def _walk(root: Path, follow_symlinks: bool, consider, result: ScanResult) -> None:
    visited: set[tuple[int, int]] = set()

    def on_error(exc: OSError) -> None:
        result.failures.append((exc.filename or str(root), f"cannot list folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=follow_symlinks):
        try:
            st = os.stat(dirpath)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in visited:  # reached again through a link: a cycle or a second way in
            dirnames[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        kept = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            if not follow_symlinks and os.path.islink(os.path.join(dirpath, name)):
                result.skipped.append((os.path.join(dirpath, name), SYMLINK_SKIPPED))
                result.links.append(os.path.join(dirpath, name))
            else:
                kept.append(name)
        dirnames[:] = kept
        sidecars = frozenset(name for name in filenames if is_sidecar_name(name))
        for name in sorted(filenames):
            if is_image_name(name):
                consider(os.path.join(dirpath, name), listing=sidecars)

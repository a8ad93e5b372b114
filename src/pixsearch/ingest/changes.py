"""Files that moved or went away since they were indexed, applied to their rows — for ingest runs (a move found by
content hash, a prune of the scanned folders) and for a folder watcher's batches (the moves and deletions it saw).

A moved file keeps its row, vectors, metadata and regions under its new path: nothing is embedded again. A file is
pruned only when it is gone for sure; one that cannot be looked at right now (an unreadable folder) keeps its row.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable, Sequence

from pixsearch.ingest.descriptions import is_sidecar_name, photos_for_sidecar
from pixsearch.ingest.formats import companion_key
from pixsearch.ingest.scan import normal_path, photo_id, valid_utf8, walk_refusal
from pixsearch.sources.urls import is_object_url
from pixsearch.store import IndexStore, PhotoLocation, StoredState


def location(path: str, size_bytes: int, mtime_ns: int) -> PhotoLocation:
    """What a photo's row says about where its file is: the key follows the path."""
    return PhotoLocation(id=photo_id(path), path=path, folder=os.path.dirname(path), filename=os.path.basename(path),
                         size_bytes=size_bytes, mtime_ns=mtime_ns, companion_key=companion_key(path))


def gone_from_disk(path: str) -> bool:
    """Whether a stored photo's file is no longer there (an object store's photo is never taken for gone here:
    ingest/objects.py knows how to ask)."""
    return not is_object_url(path) and not os.path.lexists(path)


class MovedFiles:
    """Finds, for new files, the rows of files with the same bytes whose paths no longer exist: the same photos,
    moved or renamed. One query per call (a batch of files). Each row is claimed once (two copies of a moved file:
    one takes the row, the other is new). `gone(path)`: whether a stored path no longer exists."""

    def __init__(self, store: IndexStore, gone: Callable[[str], bool] = gone_from_disk):
        self.store, self.gone = store, gone
        self._claimed: set[str] = set()

    def claim(self, digests: Sequence[str]) -> list[StoredState | None]:
        """For each content hash in order, the row it takes over, or None (a new photo)."""
        if not digests:
            return []
        candidates = self.store.same_content(set(digests))
        claimed: list[StoredState | None] = []
        for digest in digests:
            row = next((row for row in candidates.get(digest, ())
                        if row.id not in self._claimed and self.gone(row.path)), None)
            if row is not None:
                self._claimed.add(row.id)
            claimed.append(row)
        return claimed


def _folder_prefix(folder: str) -> str:
    return folder.rstrip(os.sep) + os.sep


def _gone(path: str) -> bool:
    """Deleted for sure: a file that cannot be looked at (its folder unreadable for now, an I/O error) is kept."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        pass
    return False


def prune(store: IndexStore, roots: Sequence[Path], links: Sequence[str] = (), found: Collection[str] = ()) -> int:
    """Remove the rows of files that were under a scanned folder and are gone from disk, or that lie behind one of
    the symbolic `links` the scan passed over — unless the scan `found` them another way (a link named as a root);
    how many."""
    passed_over = set(links)

    def behind_link(path: str) -> bool:
        while path not in passed_over:
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent
        return True

    gone: list[str] = []
    for root in roots:
        root = Path(normal_path(root))
        if root.is_dir():
            gone += [key for key, path in store.paths_under(_folder_prefix(str(root)))
                     if path not in found and (_gone(path) or behind_link(path))]
    return store.delete(gone)


def fold_spellings(store: IndexStore) -> int:
    """Rows stored under a path not in normal_path form (older releases kept `/a/home/../p/x.jpg` as given, keyed
    by that spelling) take the normal one, with their vectors, captions and regions. Where a row already has it,
    or two spellings meet, one row is kept (the one at the normal path, if any) and the others are removed; the
    number removed. All in one transaction."""
    misspelled = [state for state in store.paths_not_normal() if normal_path(state.path) != state.path]
    if not misspelled:
        return 0
    by_normal: dict[str, list[StoredState]] = {}
    for state in misspelled:
        by_normal.setdefault(normal_path(state.path), []).append(state)
    existing = store.stored_states([photo_id(path) for path in by_normal])
    moves, removed = [], []
    for path, states in by_normal.items():
        if photo_id(path) not in existing:
            first = states.pop(0)
            moves.append((first.id, location(path, first.size_bytes, first.mtime_ns)))
        removed += [state.id for state in states]
    return store.fold_photos(moves, removed)


def forget(store: IndexStore, paths: Iterable[str]) -> int:
    """Remove the rows of these files, and of every file under them where they were folders; how many."""
    keys: list[str] = []
    for path in paths:
        keys.append(photo_id(path))
        keys += [key for key, _ in store.paths_under(_folder_prefix(path))]
    return store.delete(keys)


@dataclass
class FolderChanges:
    """What apply_watched_changes did to the rows, and the files left to index."""

    moved: int = 0
    removed: int = 0
    to_index: list[str] = field(default_factory=list)


def apply_watched_changes(store: IndexStore, changed: set[str], deleted: set[str], moved: list[tuple[str, str]], *,
                          roots: Sequence[Path], follow_symlinks: bool = False) -> FolderChanges:
    """One batch of what a folder watcher of `roots` saw (ingest/watch.py), in its order: moves (the row follows its
    file), then deletions (a folder's photos go with it). Returns the new and changed files to index as a run would,
    moved files among them (unchanged unless their sidecars differ now); a sidecar stands for its photos.

    Every path is checked as a scan of `roots` would check it (scan.walk_refusal): a row whose file moved behind a
    symbolic link (without follow_symlinks) or out of the roots is removed, and the file is left to the run, which
    skips it."""
    changed = {normal_path(p) for p in changed}
    deleted = {normal_path(p) for p in deleted}
    moved = [(normal_path(src), normal_path(dest)) for src, dest in moved]
    for path in [*deleted, *(p for move in moved for p in move), *list(changed)]:
        if is_sidecar_name(path):
            changed.update(photos_for_sidecar(path))
            changed.discard(path)
    photo_moves = [(src, dest) for src, dest in moved if not is_sidecar_name(dest)]
    refused = [src for src, dest in photo_moves if walk_refusal(dest, roots, follow_symlinks) is not None]
    moves = _watched_moves(store, [(src, dest) for src, dest in photo_moves if src not in refused])
    changed.update(dest for _, dest in photo_moves)
    store.move_photos(moves)
    removed = forget(store, [path for path in deleted if not is_sidecar_name(path)] + refused)
    present = sorted(p for p in changed if os.path.isfile(p) and not is_sidecar_name(p))
    return FolderChanges(moved=len(moves), removed=removed, to_index=present)


def _watched_moves(store: IndexStore, moved: list[tuple[str, str]]) -> list[tuple[str, PhotoLocation]]:
    """(old key, new location) of the moved files that were indexed and are still a regular file at their
    destination; whatever else is at a destination is read as a new file."""
    stored = store.stored_states([photo_id(src) for src, _ in moved])
    moves = []
    for src, dest in moved:
        state = stored.get(photo_id(src))
        try:
            st = os.stat(dest) if state is not None and valid_utf8(dest) else None
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            moves.append((state.id, location(dest, st.st_size, st.st_mtime_ns)))
    return moves

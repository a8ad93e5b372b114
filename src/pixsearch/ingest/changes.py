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
from typing import Iterable, Sequence

from pixsearch.ingest.descriptions import is_sidecar_name, photos_for_sidecar
from pixsearch.ingest.formats import companion_key
from pixsearch.ingest.scan import photo_id, valid_utf8
from pixsearch.store import IndexStore, PhotoLocation, StoredState


def location(path: str, size_bytes: int, mtime_ns: int) -> PhotoLocation:
    """What a photo's row says about where its file is: the key follows the path."""
    return PhotoLocation(id=photo_id(path), path=path, folder=os.path.dirname(path), filename=os.path.basename(path),
                         size_bytes=size_bytes, mtime_ns=mtime_ns, companion_key=companion_key(path))


class MovedFiles:
    """Finds, for new files, the rows of files with the same bytes whose paths no longer exist: the same photos,
    moved or renamed. One query per call (a batch of files). Each row is claimed once (two copies of a moved file:
    one takes the row, the other is new)."""

    def __init__(self, store: IndexStore):
        self.store = store
        self._claimed: set[str] = set()

    def claim(self, digests: Sequence[str]) -> list[StoredState | None]:
        """For each content hash in order, the row it takes over, or None (a new photo)."""
        if not digests:
            return []
        candidates = self.store.same_content(set(digests))
        claimed: list[StoredState | None] = []
        for digest in digests:
            row = next((row for row in candidates.get(digest, ())
                        if row.id not in self._claimed and not os.path.lexists(row.path)), None)
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


def prune(store: IndexStore, roots: Sequence[Path]) -> int:
    """Remove the rows of files that were under a scanned folder and are gone from disk; how many."""
    gone: list[str] = []
    for root in roots:
        root = Path(root).expanduser().absolute()
        if root.is_dir():
            gone += [key for key, path in store.paths_under(_folder_prefix(str(root))) if _gone(path)]
    return store.delete(gone)


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


def apply_watched_changes(store: IndexStore, changed: set[str], deleted: set[str], moved: list[tuple[str, str]]
                          ) -> FolderChanges:
    """One batch of what a folder watcher saw (ingest/watch.py), in its order: moves (the row follows its file),
    then deletions (a folder's photos go with it). Returns the new and changed files to index as a run would,
    moved files among them (unchanged unless their sidecars differ now); a sidecar stands for its photos."""
    changed = set(changed)
    for path in [*deleted, *(p for move in moved for p in move), *list(changed)]:
        if is_sidecar_name(path):
            changed.update(photos_for_sidecar(path))
            changed.discard(path)
    moves = _watched_moves(store, [(src, dest) for src, dest in moved if not is_sidecar_name(dest)])
    changed.update(dest for _, dest in moved if not is_sidecar_name(dest))
    store.move_photos(moves)
    removed = forget(store, [path for path in deleted if not is_sidecar_name(path)])
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

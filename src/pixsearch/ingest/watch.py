"""Watch photo folders and report what changed, in batches, once things are quiet.

Copying 500 photos into a folder fires thousands of file-system events (create, several modifies, close per file);
an editor's save is a write to a temporary file and a rename. Indexing on every event would redo work and read
half-written files, so events are folded into one pending batch and delivered when no event came for `debounce_s`
(or, during an endless stream, `max_delay_s` after the batch's first event). Keep debounce_s above ~0.5 s: watchdog's
inotify backend holds a move-out that long to pair it with a move-in, and later events wait behind it.

What a batch means — apply it in this order, and it leaves the index matching the folder:
    moved    [(src, dest)]: the row indexed at src now belongs to dest, replacing any row at dest. Apply them
             together: take the rows of all sources first, then place them (a swap a<->b is two moves). A folder
             moved within the tree arrives as one move per file in it.
    deleted  {path}: gone; may name a *folder* that left the tree (moved out), whose files were not announced:
             drop everything indexed under it. A path with nothing indexed is harmless.
    changed  {path}: created or modified: (re)read it.
Each source and each destination appears once; `changed` and `deleted` are disjoint; `deleted` holds no move's
source or destination (`changed` may hold a destination written after the move: re-read it after moving). Chains
are folded (a->b->c is one move a->c); a file written and then moved shows as deleted source + changed destination.
Sidecars (.xmp/.txt) are reported like photos: map them with descriptions.photos_for_sidecar.

Ignored: folders' own create/modify events, hidden files and anything under hidden folders (".photo.jpg.tmp" as
written by rsync and editors, ".thumbnails/"), names starting with "~" or ending in "~", and every suffix that is
neither an image nor a sidecar (".part", ".tmp", ".crdownload"...). An atomic save — write ".x.jpg.tmp", rename to
"x.jpg" — therefore arrives as `changed {x.jpg}`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver, PollingObserverVFS

from pixsearch.ingest.descriptions import SIDECAR_SUFFIXES
from pixsearch.ingest.formats import EXTRA_SUFFIXES
from pixsearch.ingest.scan import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

OnChange = Callable[[set[str], set[str], list[tuple[str, str]]], None]
DEFAULT_SUFFIXES = frozenset(IMAGE_SUFFIXES | EXTRA_SUFFIXES | set(SIDECAR_SUFFIXES))


@dataclass
class _Batch:
    """Pending changes, folded as events arrive so that the batch always describes the net effect."""

    changed: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    moves: dict[str, str] = field(default_factory=dict)  # dest -> original src, in arrival order

    def __bool__(self) -> bool:
        return bool(self.changed or self.deleted or self.moves)

    def change(self, path: str) -> None:
        self.deleted.discard(path)
        self.changed.add(path)

    def delete(self, path: str) -> None:
        self.changed.discard(path)
        origin = self.moves.pop(path, None)
        if origin is not None:  # moved here earlier in this batch and now gone: the original row goes
            self._drop(origin)
        if path not in self.moves.values():  # else: re-created at a move's source and deleted: nothing indexed
            self.deleted.add(path)

    def move(self, src: str, dest: str) -> None:
        written = src in self.changed  # created or rewritten in this batch before the move
        self.changed.discard(src)
        origin = self.moves.pop(src, src)  # fold a -> b -> c into a -> c
        if origin != src:
            self._drop(src)  # what was indexed at b before a replaced it is gone too
        overwritten = self.moves.pop(dest, None)  # an earlier move onto dest: that file is gone now
        if overwritten is not None and overwritten != origin:
            self._drop(overwritten)
        self.deleted.discard(dest)
        if written:  # the row at the origin is stale: drop it and read the file at dest
            if origin != dest:
                self._drop(origin)
            self.changed.add(dest)
            return
        self.changed.discard(dest)  # dest now holds src's content: the move says so
        if origin != dest:
            self.moves[dest] = origin

    def _drop(self, path: str) -> None:
        """The row indexed at `path` is gone — unless it lives on (a pending move's source) or is replaced anyway
        (a pending move's destination, or a file there that is due to be read)."""
        if path not in self.changed and path not in self.moves and path not in self.moves.values():
            self.deleted.add(path)

    def result(self) -> tuple[set[str], set[str], list[tuple[str, str]]]:
        moved = [(src, dest) for dest, src in self.moves.items()]
        return set(self.changed), set(self.deleted), moved


class FolderWatcher:
    """Watches `roots` recursively and calls `on_change(changed, deleted, moved)` with debounced batches.

    on_change runs on one worker thread, never concurrently with itself; events that arrive while it runs go into
    the next batch. An exception in it is logged and the watcher goes on. `polling=True` uses a polling observer
    (network shares, where inotify sees nothing of other machines' writes); the default is the OS's notifications.
    The polling observer walks into links to folders only with `follow_symlinks` (as the OS's notifications never
    do): a link to / or a link cycle would make every poll walk far more than the watched folders. Either way the
    receiver checks what it is handed as a scan would (service/photos.py apply_folder_changes).
    Use as a context manager, or start() and stop()."""

    def __init__(self, roots: Iterable[str | os.PathLike], on_change: OnChange, debounce_s: float = 1.0, *,
                 max_delay_s: float = 5.0, polling: bool = False, follow_symlinks: bool = False,
                 suffixes: Iterable[str] | None = None):
        self.roots = [os.path.abspath(os.fspath(r)) for r in roots]
        self.on_change = on_change
        self.debounce_s = debounce_s
        self.max_delay_s = max(max_delay_s, debounce_s)
        self.suffixes = frozenset(s.lower() for s in (suffixes if suffixes is not None else DEFAULT_SUFFIXES))
        if not polling:
            self._observer = Observer()
        elif follow_symlinks:
            self._observer = PollingObserver(timeout=1.0)
        else:  # lstat: a link is an entry of its own, never a folder to walk into
            self._observer = PollingObserverVFS(os.lstat, os.scandir, polling_interval=1.0)
        self._cond = threading.Condition()
        self._batch = _Batch()
        self._first_event = self._last_event = 0.0
        self._stopping = False
        self._worker: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self) -> FolderWatcher:
        for root in self.roots:
            if not os.path.isdir(root):
                raise FileNotFoundError(f"not a folder: {root}")
        handler = _Handler(self)
        for root in self.roots:
            try:
                self._observer.schedule(handler, root, recursive=True)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot watch {root}: {exc.strerror or exc} (inotify watches are limited "
                                         "by fs.inotify.max_user_watches; polling=True avoids them)") from exc
        self._worker = threading.Thread(target=self._deliver_loop, name="pixsearch-watch", daemon=True)
        self._worker.start()
        self._observer.start()
        return self

    def stop(self, *, flush: bool = True) -> None:
        """Stop watching and join the threads. With `flush`, a pending batch is delivered first (without waiting for
        the debounce); otherwise it is dropped."""
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join()
        with self._cond:
            self._stopping = True
            if not flush:
                self._batch = _Batch()
            self._cond.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()

    def __enter__(self) -> FolderWatcher:
        return self.start()

    def pending(self) -> int:
        """Paths in the batch waiting for the folders to be quiet (changed, deleted and moved)."""
        with self._cond:
            return len(self._batch.changed) + len(self._batch.deleted) + len(self._batch.moves)

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- events -------------------------------------------------------------------------------------------------------

    def relevant(self, path: str) -> bool:
        """A photo or sidecar that is neither hidden, under a hidden folder, nor a temporary file."""
        name = os.path.basename(path)
        if name.startswith((".", "~")) or name.endswith("~"):
            return False
        if os.path.splitext(name)[1].lower() not in self.suffixes:
            return False
        return not self._hidden_folder(os.path.dirname(path))

    def _hidden_folder(self, folder: str) -> bool:
        for root in self.roots:
            if folder == root or folder.startswith(root.rstrip(os.sep) + os.sep):
                relative = os.path.relpath(folder, root)
                return relative != "." and any(part.startswith(".") for part in relative.split(os.sep))
        return False

    def _record(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        with self._cond:
            was_empty = not self._batch
            if self._fold(self._batch, event.event_type, event.is_directory, src, dest):
                now = time.monotonic()
                if was_empty:
                    self._first_event = now
                self._last_event = now  # a relevant event, even one that changes nothing, means "not quiet yet"
                self._cond.notify_all()

    def _fold(self, batch: _Batch, kind: str, is_directory: bool, src: str, dest: str) -> bool:
        """Fold one event into the batch; whether it concerned us."""
        if is_directory:
            # Files of a folder created or moved within the tree arrive as their own events; a folder that left the
            # tree (moved out, or into a hidden folder) does not announce its files.
            if kind == "deleted" and self._visible_folder(src):
                batch.delete(src)
                return True
            if kind == "moved" and self._visible_folder(src) and not self._visible_folder(dest):
                batch.delete(src)
                return True
            return False
        if kind in ("created", "modified", "closed"):
            if self.relevant(src):
                batch.change(src)
                return True
        elif kind == "deleted":
            if self.relevant(src):
                batch.delete(src)
                return True
        elif kind == "moved":
            keep_src, keep_dest = self.relevant(src), self.relevant(dest)
            if keep_src and keep_dest:
                batch.move(src, dest)
            elif keep_src:
                batch.delete(src)
            elif keep_dest:
                batch.change(dest)
            return keep_src or keep_dest
        return False

    def _visible_folder(self, folder: str) -> bool:
        return not os.path.basename(folder).startswith(".") and not self._hidden_folder(os.path.dirname(folder))

    # -- delivery -----------------------------------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        while True:
            with self._cond:
                while not self._batch and not self._stopping:
                    self._cond.wait()
                if not self._batch:
                    return  # stopping, nothing pending
                while not self._stopping:
                    deadline = min(self._last_event + self.debounce_s, self._first_event + self.max_delay_s)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch, self._batch = self._batch, _Batch()
            if batch:
                changed, deleted, moved = batch.result()
                try:
                    self.on_change(changed, deleted, moved)
                except Exception:  # noqa: BLE001 - one failed batch must not end the watching
                    log.exception("folder watcher: on_change failed for a batch of %d paths",
                                  len(changed) + len(deleted) + len(moved))


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher):
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        try:
            self._watcher._record(event)
        except Exception:  # noqa: BLE001 - never kill watchdog's emitter thread
            log.exception("folder watcher: event not recorded: %r", event)

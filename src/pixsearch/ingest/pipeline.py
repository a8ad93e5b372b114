"""The ingest pipeline: scan -> decide what changed -> decode (thread pool) -> embed (batches) -> write (COPY)."""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol, Sequence, TypeVar

import json
import threading

import numpy as np
import psycopg

from pixsearch.db import Database
from pixsearch.ingest.decode import (DRAFT_SIZE, DecodedImage, DecodeError, content_hash, decode_bytes,
                                    read_file_with_stat)
from pixsearch.ingest.descriptions import Descriptions, read_descriptions
from pixsearch.ingest.formats import companion_key
from pixsearch.ingest.layout import layout_signature
from pixsearch.ingest.ocr import OcrError, OcrUnavailable, TextBox, joined_text, shared_reader
from pixsearch.ingest.scan import FoundFile, normal_path, photo_id, scan
from pixsearch.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from pixsearch.models.base import Embedder
from pixsearch.store import DocumentTable, PhotoRecord, StoredState
from pixsearch.store.photos import (
    PhotoLocation,
    fold_photos,
    move_photos,
    paths_under,
    paths_not_normal,
    same_content,
    stored_states,
    touch,
    update_descriptions,
    write_photos,
)

log = logging.getLogger(__name__)

_LOOKUP_CHUNK = 1000
# What a refused batch can be refused for that is about its rows, not the connection: bad bytes in a string, a
# value out of range, a vector of the wrong width. Connection and server errors still stop the run.
_ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded, ValueError,
               UnicodeError)

T = TypeVar("T")
R = TypeVar("R")


class IngestProgress(Protocol):
    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def failure(self, path: str, reason: str) -> None: ...


class NoProgress:
    """IngestProgress that shows nothing (library use, tests, background work)."""

    def start(self, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def failure(self, path: str, reason: str) -> None:
        pass


@dataclass(frozen=True)
class IngestOptions:
    batch_size: int = 16
    decode_workers: int = 2
    prune: bool = True  # remove rows of files deleted from the scanned folders
    follow_symlinks: bool = False
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ocr: bool = False  # read text in the pixels (ingest/ocr.py): ~0.5-1 s per photo on 2 cores


@dataclass
class IngestReport:
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    moved: int = 0  # files moved or renamed: their rows followed them, nothing embedded again
    metadata_updated: int = 0  # photos whose caption sidecars changed: captions read again, pixels not
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # passed over on purpose (links, FIFOs...)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # indexed, but something was left out
    keys: list[str] = field(default_factory=list)  # ids of the photos found that are in the index after the run
    embedded_keys: list[str] = field(default_factory=list)  # ids of the photos (re-)embedded by this run
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: {"scan": 0.0, "decode": 0.0, "ocr": 0.0, "embed": 0.0, "write": 0.0}
    )
    elapsed_seconds: float = 0.0

    @property
    def embedded(self) -> int:
        return self.added + self.updated

    def to_json(self) -> dict:
        return {
            "scanned": self.scanned,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "moved": self.moved,
            "metadata_updated": self.metadata_updated,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "warnings": [{"path": p, "message": m} for p, m in self.warnings],
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


@dataclass
class _Work:
    file: FoundFile
    stored: StoredState | None
    describe_only: bool = False  # the file is as indexed but its caption sidecars changed
    decoded: DecodedImage | None = None
    prepared: Any = None  # the embedder's prepare_image() result, made in the decode thread
    described: Descriptions | None = None
    text_boxes: list[TextBox] | None = None  # OCR, in pixels of the original image
    layout: str | None = None
    moved_from: StoredState | None = None  # the row of a file with the same bytes that is gone from its path
    same_content: bool = False
    error: str | None = None


class _MovedFiles:
    """Finds, for a new file, the row of a file with the same bytes whose path no longer exists: the same photo,
    moved or renamed. Each row is claimed once (two copies of a moved file: one takes the row, one is new)."""

    def __init__(self, db: Database, table: DocumentTable):
        self.db, self.table = db, table
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, digest: str) -> StoredState | None:
        with self.db.connection() as conn:
            candidates = same_content(conn, self.table, digest)
        with self._lock:
            for row in candidates:
                if row.id not in self._claimed and not os.path.lexists(row.path):
                    self._claimed.add(row.id)
                    return row
        return None


def ingest_paths(
    db: Database,
    table: DocumentTable,
    embedder: Embedder,
    roots: Sequence[Path],
    options: IngestOptions = IngestOptions(),
    *,
    columns: dict[str, str] | None = None,
    caption_field: str | None = None,
    progress: IngestProgress | None = None,
    loading: Callable[[int], ContextManager[Any]] | None = None,
    within: Sequence[Path] | None = None,
) -> IngestReport:
    """Index the images under `roots` with `embedder`, its vector spaces written to `columns` (space -> vector
    field; default: the fields named like the spaces), each photo's caption (title, description, keywords)
    embedded as text into `caption_field` when given. `loading(n)` wraps the writes of the n files to embed (the
    service's choice between incremental and bulk loading).

    Unchanged files (size + mtime, then content hash) are skipped; a file whose caption sidecars changed has its
    captions read again; a new file with the bytes of an indexed file that is gone from its path is that photo
    moved: its row follows it. Files that fail to read or decode are reported and skipped; each batch is written in
    its own transaction, and rows the database refuses are reported one by one while the rest of their batch is
    written. `within`: the folders `roots` were found in, by a folder watcher (see scan: then none is a root).

    With options.prune, the run first folds rows stored under another spelling of their path into their normal one
    (_fold_spellings), and afterwards removes the rows of files under the scanned folders that are gone, or that lie
    behind a symbolic link the scan did not follow (a watcher or a --follow-symlinks run put them there)."""
    progress = progress or NoProgress()
    report = IngestReport()
    started = time.perf_counter()

    t0 = time.perf_counter()
    if options.prune:
        report.removed += _fold_spellings(db, table)
    scanned = scan(roots, within=within, follow_symlinks=options.follow_symlinks,
                   max_file_bytes=options.max_file_bytes)
    for path, reason in scanned.failures:
        report.failed.append((path, reason))
        progress.failure(path, reason)
    report.skipped.extend(scanned.skipped)
    report.scanned = len(scanned.found)
    stored = _stored_states(db, table, [f.id for f in scanned.found])
    pending: list[_Work] = []
    for f in scanned.found:
        state = stored.get(f.id)
        if state and state.path == f.path and state.size_bytes == f.size_bytes and state.mtime_ns == f.mtime_ns:
            if state.sidecar_state == f.sidecar_state:
                report.unchanged += 1
            else:
                pending.append(_Work(f, state, describe_only=True))
        else:
            pending.append(_Work(f, state))
    report.stage_seconds["scan"] = time.perf_counter() - t0

    progress.start(len(pending))
    writer = _Writer(db, table, embedder, columns, caption_field, report, progress)
    with (loading or _incremental)(sum(not w.describe_only for w in pending)):
        _run(writer, pending, options, _MovedFiles(db, table))
    failed = {path for path, _ in report.failed}
    report.keys = [f.id for f in scanned.found if f.path not in failed]
    if options.prune:
        report.removed += _prune(db, table, roots, scanned.links, {f.path for f in scanned.found})
    if report.added or report.updated or report.removed:
        with db.connection() as conn:
            table.analyze(conn)
    report.elapsed_seconds = time.perf_counter() - started
    return report


@contextmanager
def _incremental(count: int) -> Iterator[None]:
    yield


def _run(writer: "_Writer", pending: list[_Work], options: IngestOptions, moved_files: _MovedFiles) -> None:
    """Decode (thread pool), embed and write the pending files, batch by batch."""
    report, progress = writer.report, writer.progress
    reader = shared_reader() if options.ocr else None
    batch: list[_Work] = []
    moves: list[_Work] = []
    described: list[_Work] = []
    touched: list[tuple[str, int, int]] = []
    with ThreadPoolExecutor(max_workers=options.decode_workers, thread_name_prefix="pixsearch-decode") as pool:
        decode = lambda w: _decode(w, report, writer.embedder, options, moved_files, reader)  # noqa: E731
        for work in _bounded_map(pool, decode, pending, window=options.batch_size * 2):
            if work.error is not None:
                report.failed.append((work.file.path, work.error))
                progress.failure(work.file.path, work.error)
                progress.advance()
            elif work.moved_from is not None:
                moves.append(work)
                if len(moves) >= options.batch_size:
                    writer.moves(moves)
                    moves = []
            elif work.describe_only:
                described.append(work)
                if len(described) >= options.batch_size:
                    writer.descriptions(described)
                    described = []
            elif work.same_content:
                touched.append((work.file.id, work.file.size_bytes, work.file.mtime_ns))
                report.unchanged += 1
                progress.advance()
            else:
                batch.append(work)
                if len(batch) >= options.batch_size:
                    writer.photos(batch)
                    batch = []
        writer.moves(moves)
        writer.descriptions(described)
        writer.photos(batch)
    if touched:
        with writer.db.connection() as conn:
            touch(conn, writer.table, touched)


def _stored_states(db: Database, table: DocumentTable, ids: list[str]) -> dict[str, StoredState]:
    states: dict[str, StoredState] = {}
    with db.connection() as conn:
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            states.update(stored_states(conn, table, ids[start : start + _LOOKUP_CHUNK]))
    return states


def _decode(work: _Work, report: IngestReport, embedder: Embedder, options: IngestOptions, moved_files: _MovedFiles,
            reader: Any) -> _Work:
    t0 = time.perf_counter()
    path = work.file.path
    try:
        if work.describe_only:
            work.described = read_descriptions(path, follow_symlinks=options.follow_symlinks)
            return work
        data, info = read_file_with_stat(path, max_bytes=options.max_file_bytes,
                                         follow_symlinks=options.follow_symlinks)
        if (info.st_size, info.st_mtime_ns) != (work.file.size_bytes, work.file.mtime_ns):
            # changed since the scan: the row must describe the bytes read, or the next run would misjudge it
            work.file = replace(work.file, size_bytes=info.st_size, mtime_ns=info.st_mtime_ns)
        digest = content_hash(data)
        if work.stored is not None and work.stored.content_hash == digest:
            work.same_content = True
            if work.stored.sidecar_state != work.file.sidecar_state:
                work.describe_only = True
                work.described = read_descriptions(path, follow_symlinks=options.follow_symlinks)
            return work
        if work.stored is None:
            work.moved_from = moved_files.claim(digest)
            if work.moved_from is not None:
                if work.moved_from.sidecar_state != work.file.sidecar_state:
                    work.described = read_descriptions(path, follow_symlinks=options.follow_symlinks)
                return work

        def describe(image, exif) -> Descriptions:
            return read_descriptions(path, image, exif, follow_symlinks=options.follow_symlinks)

        work.decoded = decode_bytes(data, digest, max_pixels=options.max_pixels, describe=describe,
                                    draft=(reader.max_side,) * 2 if reader is not None else DRAFT_SIZE)
        work.described = work.decoded.described
        if reader is not None:
            work.text_boxes = _read_text(reader, work, report)
        work.layout = layout_signature(work.decoded.image)
        work.prepared = _prepared(embedder, work.decoded.image)
        work.decoded.image = None  # only the model's small input is kept until the batch is embedded
    except DecodeError as exc:
        work.error = str(exc)
    finally:
        # Several decode threads add here; float += under the GIL is good enough for a timing total.
        report.stage_seconds["decode"] += time.perf_counter() - t0
    return work


def _read_text(reader: Any, work: _Work, report: IngestReport) -> list[TextBox] | None:
    """OCR of the decoded image, boxes in pixels of the original (the JPEG may have been decoded smaller). A
    failure is a warning on the photo, not a failed photo."""
    image = work.decoded.image
    t0 = time.perf_counter()
    try:
        boxes = reader.read(image)
    except (OcrError, OcrUnavailable) as exc:
        work.decoded.warnings.append(f"text not read: {exc}")
        return None
    finally:
        report.stage_seconds["ocr"] += time.perf_counter() - t0
    sx, sy = work.decoded.width / image.width, work.decoded.height / image.height
    return [TextBox(b.text, b.score, (round(b.box[0] * sx), round(b.box[1] * sy), round(b.box[2] * sx),
                                      round(b.box[3] * sy))) for b in boxes]


def _prepared(embedder: Embedder, image) -> Any:
    try:
        return embedder.prepare_image(image)
    except (ValueError, OSError) as exc:  # PIL decoded it but cannot resample it (e.g. a 0-pixel side)
        raise DecodeError(f"cannot prepare image for the model: {exc}") from None


def _bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """Like pool.map, in order, but with at most `window` items in flight so decoded pixels do not pile up."""
    in_flight: deque = deque()
    for item in items:
        in_flight.append(pool.submit(fn, item))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _file_time(mtime_ns: int) -> datetime:
    """A photo's date when its EXIF has none: the file's modification time, as most photo libraries do."""
    return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc)


class _Writer:
    """Writes what the decode threads produced, batch by batch, and keeps the report."""

    def __init__(self, db: Database, table: DocumentTable, embedder: Embedder, columns: dict[str, str] | None,
                 caption_field: str | None, report: IngestReport, progress: IngestProgress):
        self.db, self.table, self.embedder = db, table, embedder
        self.columns, self.caption_field = columns or {}, caption_field
        self.report, self.progress = report, progress

    def captions(self, described: Sequence[Descriptions | None]) -> list[np.ndarray | None]:
        """Each photo's caption embedded in the model's text space (None without a caption or a caption field)."""
        texts = [d.searchable_text() if d is not None else "" for d in described]
        out: list[np.ndarray | None] = [None] * len(texts)
        wanted = [i for i, text in enumerate(texts) if text.strip()]
        if self.caption_field is None or not wanted:
            return out
        vectors = self.embedder.embed_texts([texts[i] for i in wanted])
        for i, vector in zip(wanted, vectors):
            out[i] = vector
        return out

    def photos(self, batch: list[_Work]) -> None:
        if not batch:
            return
        report = self.report
        t0 = time.perf_counter()
        embeddings = self.embedder.embed_images([w.prepared for w in batch])
        captions = self.captions([w.described for w in batch])
        report.stage_seconds["embed"] += time.perf_counter() - t0
        records = [self._record(work, i, embeddings, captions[i]) for i, work in enumerate(batch)]
        t0 = time.perf_counter()
        refused = _write_or_bisect(self.db, self.table, records)
        report.stage_seconds["write"] += time.perf_counter() - t0
        for work in batch:
            reason = refused.get(work.file.id)
            if reason is not None:
                report.failed.append((work.file.path, reason))
                self.progress.failure(work.file.path, reason)
            else:
                warnings = work.decoded.warnings + (work.described.warnings if work.described else [])
                report.warnings.extend((work.file.path, message) for message in warnings)
                report.embedded_keys.append(work.file.id)
                if work.stored is None:
                    report.added += 1
                else:
                    report.updated += 1
            work.decoded = work.prepared = None  # release the pixels
        self.progress.advance(len(batch))

    def _record(self, work: _Work, i: int, embeddings, caption: np.ndarray | None) -> PhotoRecord:
        decoded, described, path = work.decoded, work.described or Descriptions(), work.file.path
        taken_at, taken_at_source = decoded.taken_at, decoded.taken_at_source
        if taken_at is None and described.taken_at is not None:  # a date a person or tool wrote in XMP/IPTC
            taken_at, taken_at_source = described.taken_at, described.taken_at_source
        if taken_at is None:
            taken_at, taken_at_source = _file_time(work.file.mtime_ns), "file"
        vectors = {self.columns.get(space, space): v[i] for space, v in embeddings.vectors.items()}
        if caption is not None:
            vectors[self.caption_field] = caption
        boxes = work.text_boxes
        return PhotoRecord(
            id=work.file.id, path=path, folder=os.path.dirname(path), filename=os.path.basename(path),
            content_hash=decoded.content_hash, size_bytes=work.file.size_bytes, mtime_ns=work.file.mtime_ns,
            format=decoded.format, width=decoded.width, height=decoded.height, taken_at=taken_at,
            taken_at_source=taken_at_source, camera=decoded.camera, camera_make=decoded.camera_make,
            camera_model=decoded.camera_model, lens=decoded.lens, gps_lat=decoded.gps_lat, gps_lon=decoded.gps_lon,
            title=described.title, description=described.description, keywords=described.keywords or None,
            ocr_text=(joined_text(boxes) or None) if boxes is not None else None,
            ocr_boxes=json.dumps([{"text": b.text, "score": b.score, "box": list(b.box)} for b in boxes])
            if boxes else None,
            companion_key=companion_key(path), sidecar_state=work.file.sidecar_state, layout=work.layout,
            extra=embeddings.fields[i] if embeddings.fields else {}, vectors=vectors,
        )

    def moves(self, moved: list[_Work]) -> None:
        """Rows of moved files follow them; captions are read again where the sidecars differ."""
        if not moved:
            return
        locations = [(w.moved_from.id, PhotoLocation(
            id=w.file.id, path=w.file.path, folder=os.path.dirname(w.file.path),
            filename=os.path.basename(w.file.path), size_bytes=w.file.size_bytes, mtime_ns=w.file.mtime_ns,
            companion_key=companion_key(w.file.path))) for w in moved]
        t0 = time.perf_counter()
        with self.db.connection() as conn:
            move_photos(conn, self.table, locations)
        self.report.stage_seconds["write"] += time.perf_counter() - t0
        self.report.moved += len(moved)
        self.progress.advance(len(moved))
        self.descriptions([w for w in moved if w.described is not None], advance=False)

    def descriptions(self, works: list[_Work], *, advance: bool = True) -> None:
        """Photos whose caption sidecars changed: their captions (and caption vectors) replaced."""
        if not works:
            return
        captions = self.captions([w.described for w in works])
        rows = []
        for work, caption in zip(works, captions):
            d = work.described
            row = {self.table.spec.key_field: work.file.id, "title": d.title, "description": d.description,
                   "keywords": d.keywords or None, "sidecar_state": work.file.sidecar_state}
            if self.caption_field is not None:
                row[self.caption_field] = caption
            rows.append(row)
            self.report.warnings.extend((work.file.path, message) for message in d.warnings)
        with self.db.connection() as conn:
            update_descriptions(conn, self.table, rows, self.caption_field)
        self.report.metadata_updated += len(works)
        if advance:
            self.progress.advance(len(works))


def _write_or_bisect(db: Database, table: DocumentTable, records: list[PhotoRecord]) -> dict[str, str]:
    """Write the batch in one transaction. If the database refuses it for something in its rows, write each half
    on its own (recursively), so every good row lands and each bad one is named with the database's reason.
    Returns id -> reason for the rows that were refused."""
    try:
        with db.connection() as conn:
            write_photos(conn, table, records)
        return {}
    except _ROW_ERRORS as exc:
        if len(records) == 1:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("the database refused %s: %s", records[0].path, reason)
            return {records[0].id: f"the database refused this photo's row: {reason}"}
    middle = len(records) // 2
    return {**_write_or_bisect(db, table, records[:middle]), **_write_or_bisect(db, table, records[middle:])}


def _gone(path: str) -> bool:
    """Deleted for sure: a file that cannot be looked at (its folder unreadable for now, an I/O error) is kept."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        pass
    return False


def _prune(db: Database, table: DocumentTable, roots: Sequence[Path], links: Sequence[str], found: set[str]) -> int:
    """Remove rows of files that were under a scanned folder and are gone from disk, or that lie behind one of the
    symbolic `links` the scan passed over (unless the scan found them another way: a link named as a root)."""
    gone: list[str] = []
    passed_over = set(links)

    def behind_link(path: str) -> bool:
        while path not in passed_over:
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent
        return True

    with db.connection() as conn:
        for root in roots:
            root = Path(normal_path(root))
            if not root.is_dir():
                continue
            for key, path in paths_under(conn, table, str(root).rstrip(os.sep) + os.sep):
                if path not in found and (_gone(path) or behind_link(path)):
                    gone.append(key)
        return table.delete(conn, gone)


def _fold_spellings(db: Database, table: DocumentTable) -> int:
    """Rows stored under a path not in normal_path form (older releases kept `/a/home/../p/x.jpg` as given, keyed
    by that spelling) take the normal one, with their vectors, captions and regions. Where a row already has it,
    or two spellings meet, one row is kept (the one at the normal path, if any) and the others are removed; the
    number removed. All in one transaction."""
    with db.connection() as conn:
        misspelled = [state for state in paths_not_normal(conn, table) if normal_path(state.path) != state.path]
        if not misspelled:
            return 0
        by_normal: dict[str, list[StoredState]] = {}
        for state in misspelled:
            by_normal.setdefault(normal_path(state.path), []).append(state)
        existing = stored_states(conn, table, [photo_id(path) for path in by_normal])
        moves, removed = [], []
        for path, states in by_normal.items():
            if photo_id(path) not in existing:
                first = states.pop(0)
                moves.append((first.id, PhotoLocation(
                    id=photo_id(path), path=path, folder=os.path.dirname(path), filename=os.path.basename(path),
                    size_bytes=first.size_bytes, mtime_ns=first.mtime_ns, companion_key=companion_key(path))))
            removed += [state.id for state in states]
        return fold_photos(conn, table, moves, removed)

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

import psycopg

from pixsearch.db import Database
from pixsearch.ingest.decode import DecodedImage, DecodeError, content_hash, decode_bytes, read_file_with_stat
from pixsearch.ingest.scan import FoundFile, scan
from pixsearch.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from pixsearch.models.base import Embedder
from pixsearch.store import DocumentTable, PhotoRecord, StoredState
from pixsearch.store.photos import paths_under, stored_states, touch, write_photos

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


class _NoProgress:
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


@dataclass
class IngestReport:
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # passed over on purpose (links, FIFOs...)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # indexed, but something was left out
    keys: list[str] = field(default_factory=list)  # ids of the photos found that are in the index after the run
    embedded_keys: list[str] = field(default_factory=list)  # ids of the photos (re-)embedded by this run
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: {"scan": 0.0, "decode": 0.0, "embed": 0.0, "write": 0.0}
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
    decoded: DecodedImage | None = None
    prepared: Any = None  # the embedder's prepare_image() result, made in the decode thread
    same_content: bool = False
    error: str | None = None


def ingest_paths(
    db: Database,
    table: DocumentTable,
    embedder: Embedder,
    roots: Sequence[Path],
    options: IngestOptions = IngestOptions(),
    *,
    columns: dict[str, str] | None = None,
    progress: IngestProgress | None = None,
    loading: Callable[[int], ContextManager[Any]] | None = None,
) -> IngestReport:
    """Index the images under `roots` with `embedder`, its vector spaces written to `columns` (space -> vector
    field; default: the fields named like the spaces). `loading(n)` wraps the writes of the n files to embed (the
    service's choice between incremental and bulk loading). Unchanged files (size + mtime, then content hash) are skipped; files that fail
    to read or decode are reported and skipped; each batch is written in its own transaction, and rows the database
    refuses are reported one by one while the rest of their batch is written."""
    progress = progress or _NoProgress()
    report = IngestReport()
    started = time.perf_counter()

    t0 = time.perf_counter()
    scanned = scan(roots, follow_symlinks=options.follow_symlinks, max_file_bytes=options.max_file_bytes)
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
            report.unchanged += 1
        else:
            pending.append(_Work(f, state))
    report.stage_seconds["scan"] = time.perf_counter() - t0

    progress.start(len(pending))
    with (loading or _incremental)(len(pending)):
        _run(db, table, embedder, columns, pending, options, report, progress)
    failed = {path for path, _ in report.failed}
    report.keys = [f.id for f in scanned.found if f.path not in failed]
    if options.prune:
        report.removed = _prune(db, table, roots)
    if report.added or report.updated or report.removed:
        with db.connection() as conn:
            table.analyze(conn)
    report.elapsed_seconds = time.perf_counter() - started
    return report


@contextmanager
def _incremental(count: int) -> Iterator[None]:
    yield


def _run(db: Database, table: DocumentTable, embedder: Embedder, columns: dict[str, str] | None,
         pending: list[_Work], options: IngestOptions, report: IngestReport, progress: IngestProgress) -> None:
    """Decode (thread pool), embed and write the pending files, batch by batch."""
    batch: list[_Work] = []
    touched: list[tuple[str, int, int]] = []
    with ThreadPoolExecutor(max_workers=options.decode_workers, thread_name_prefix="pixsearch-decode") as pool:
        decode = lambda w: _decode(w, report, embedder, options)  # noqa: E731
        for work in _bounded_map(pool, decode, pending, window=options.batch_size * 2):
            if work.error is not None:
                report.failed.append((work.file.path, work.error))
                progress.failure(work.file.path, work.error)
                progress.advance()
            elif work.same_content:
                touched.append((work.file.id, work.file.size_bytes, work.file.mtime_ns))
                report.unchanged += 1
                progress.advance()
            else:
                batch.append(work)
                if len(batch) >= options.batch_size:
                    _embed_and_write(db, table, embedder, columns, batch, report, progress)
                    batch = []
        if batch:
            _embed_and_write(db, table, embedder, columns, batch, report, progress)
    if touched:
        with db.connection() as conn:
            touch(conn, table, touched)


def _stored_states(db: Database, table: DocumentTable, ids: list[str]) -> dict[str, StoredState]:
    states: dict[str, StoredState] = {}
    with db.connection() as conn:
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            states.update(stored_states(conn, table, ids[start : start + _LOOKUP_CHUNK]))
    return states


def _decode(work: _Work, report: IngestReport, embedder: Embedder, options: IngestOptions) -> _Work:
    t0 = time.perf_counter()
    try:
        data, info = read_file_with_stat(work.file.path, max_bytes=options.max_file_bytes,
                                         follow_symlinks=options.follow_symlinks)
        if (info.st_size, info.st_mtime_ns) != (work.file.size_bytes, work.file.mtime_ns):
            # changed since the scan: the row must describe the bytes read, or the next run would misjudge it
            work.file = replace(work.file, size_bytes=info.st_size, mtime_ns=info.st_mtime_ns)
        digest = content_hash(data)
        if work.stored is not None and work.stored.content_hash == digest:
            work.same_content = True
        else:
            work.decoded = decode_bytes(data, digest, max_pixels=options.max_pixels)
            work.prepared = _prepared(embedder, work.decoded.image)
            work.decoded.image = None  # only the model's small input is kept until the batch is embedded
    except DecodeError as exc:
        work.error = str(exc)
    finally:
        # Several decode threads add here; float += under the GIL is good enough for a timing total.
        report.stage_seconds["decode"] += time.perf_counter() - t0
    return work


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


def _embed_and_write(
    db: Database,
    table: DocumentTable,
    embedder: Embedder,
    columns: dict[str, str] | None,
    batch: list[_Work],
    report: IngestReport,
    progress: IngestProgress,
) -> None:
    t0 = time.perf_counter()
    embeddings = embedder.embed_images([w.prepared for w in batch])
    report.stage_seconds["embed"] += time.perf_counter() - t0
    records = []
    for i, work in enumerate(batch):
        decoded, path = work.decoded, work.file.path
        records.append(
            PhotoRecord(
                id=work.file.id,
                path=path,
                folder=os.path.dirname(path),
                filename=os.path.basename(path),
                content_hash=decoded.content_hash,
                size_bytes=work.file.size_bytes,
                mtime_ns=work.file.mtime_ns,
                format=decoded.format,
                width=decoded.width,
                height=decoded.height,
                taken_at=decoded.taken_at or _file_time(work.file.mtime_ns),
                camera=decoded.camera,
                gps_lat=decoded.gps_lat,
                gps_lon=decoded.gps_lon,
                extra=embeddings.fields[i] if embeddings.fields else {},
                vectors={(columns or {}).get(space, space): vectors[i] for space, vectors in embeddings.vectors.items()},
            )
        )
    t0 = time.perf_counter()
    refused = _write_or_bisect(db, table, records)
    report.stage_seconds["write"] += time.perf_counter() - t0
    for work in batch:
        reason = refused.get(work.file.id)
        if reason is not None:
            report.failed.append((work.file.path, reason))
            progress.failure(work.file.path, reason)
        else:
            for message in work.decoded.warnings:
                report.warnings.append((work.file.path, message))
            report.embedded_keys.append(work.file.id)
            if work.stored is None:
                report.added += 1
            else:
                report.updated += 1
        work.decoded = work.prepared = None  # release the pixels
    progress.advance(len(batch))


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


def _prune(db: Database, table: DocumentTable, roots: Sequence[Path]) -> int:
    """Remove rows of files that were under a scanned folder and are gone from disk."""
    gone: list[str] = []
    with db.connection() as conn:
        for root in roots:
            root = Path(root).expanduser().absolute()
            if not root.is_dir():
                continue
            for photo_id, path in paths_under(conn, table, str(root).rstrip(os.sep) + os.sep):
                if _gone(path):
                    gone.append(photo_id)
        return table.delete(conn, gone)

"""The ingest pipeline: scan -> decide what changed -> decode (thread pool) -> embed (batches) -> write (COPY)."""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

from pixsearch.db import Database
from pixsearch.ingest.decode import DecodedImage, DecodeError, content_hash, decode_bytes
from pixsearch.ingest.scan import FoundFile, scan
from pixsearch.models.base import ClassScore, Embedder
from pixsearch.store import DocumentTable, PhotoRecord, StoredState
from pixsearch.store.photos import paths_under, stored_states, touch, write_photos

MAX_TAGS = 5
MIN_TAG_PROBABILITY = 0.05
_LOOKUP_CHUNK = 1000

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


@dataclass
class IngestReport:
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
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
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


@dataclass
class _Work:
    file: FoundFile
    stored: StoredState | None
    decoded: DecodedImage | None = None
    prepared: object | None = None  # the embedder's prepare_image() result, made in the decode thread
    same_content: bool = False
    error: str | None = None


def ingest_paths(
    db: Database,
    table: DocumentTable,
    embedder: Embedder,
    roots: Sequence[Path],
    *,
    batch_size: int = 16,
    decode_workers: int = 2,
    prune: bool = True,
    progress: IngestProgress | None = None,
) -> IngestReport:
    """Index the images under `roots`. Unchanged files (size + mtime, then content hash) are skipped; files that fail
    to decode are reported and skipped; each batch is written in its own transaction."""
    progress = progress or _NoProgress()
    report = IngestReport()
    started = time.perf_counter()

    t0 = time.perf_counter()
    found, scan_failures = scan(roots)
    for path, reason in scan_failures:
        report.failed.append((path, reason))
        progress.failure(path, reason)
    report.scanned = len(found)
    stored = _stored_states(db, table, [f.id for f in found])
    pending: list[_Work] = []
    for f in found:
        state = stored.get(f.id)
        if state and state.path == f.path and state.size_bytes == f.size_bytes and state.mtime_ns == f.mtime_ns:
            report.unchanged += 1
        else:
            pending.append(_Work(f, state))
    report.stage_seconds["scan"] = time.perf_counter() - t0

    progress.start(len(pending))
    batch: list[_Work] = []
    touched: list[tuple[str, int, int]] = []
    with ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="pixsearch-decode") as pool:
        prepare = getattr(embedder, "prepare_image", None)
        for work in _bounded_map(pool, lambda w: _decode(w, report, prepare), pending, window=batch_size * 2):
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
                if len(batch) >= batch_size:
                    _embed_and_write(db, table, embedder, batch, report, progress)
                    batch = []
        if batch:
            _embed_and_write(db, table, embedder, batch, report, progress)
    if touched:
        with db.connection() as conn:
            touch(conn, table, touched)
    if prune:
        report.removed = _prune(db, table, roots)
    if report.added or report.updated or report.removed:
        with db.connection() as conn:
            table.analyze(conn)
    report.elapsed_seconds = time.perf_counter() - started
    return report


def _stored_states(db: Database, table: DocumentTable, ids: list[str]) -> dict[str, StoredState]:
    states: dict[str, StoredState] = {}
    with db.connection() as conn:
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            states.update(stored_states(conn, table, ids[start : start + _LOOKUP_CHUNK]))
    return states


def _decode(work: _Work, report: IngestReport, prepare: Callable | None = None) -> _Work:
    t0 = time.perf_counter()
    try:
        with open(work.file.path, "rb") as fh:
            data = fh.read()
        digest = content_hash(data)
        if work.stored is not None and work.stored.content_hash == digest:
            work.same_content = True
        else:
            work.decoded = decode_bytes(data, digest)
            if prepare is not None:
                work.prepared = _prepared(prepare, work.decoded.image)
                work.decoded.image = None  # only the small model views are kept until the batch is embedded
    except DecodeError as exc:
        work.error = str(exc)
    except PermissionError:
        work.error = "permission denied"
    except OSError as exc:
        work.error = f"cannot read: {exc.strerror or exc}"
    finally:
        # Several decode threads add here; float += under the GIL is good enough for a timing total.
        report.stage_seconds["decode"] += time.perf_counter() - t0
    return work


def _prepared(prepare: Callable, image) -> object:
    try:
        return prepare(image)
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


def _tags(classes: list[ClassScore]) -> list[str]:
    tags = [c.label for c in classes[:MAX_TAGS] if c.probability >= MIN_TAG_PROBABILITY]
    return tags or [c.label for c in classes[:1]]


def _embed_and_write(
    db: Database,
    table: DocumentTable,
    embedder: Embedder,
    batch: list[_Work],
    report: IngestReport,
    progress: IngestProgress,
) -> None:
    t0 = time.perf_counter()
    embeddings = embedder.embed_images([w.prepared if w.prepared is not None else w.decoded.image for w in batch])
    report.stage_seconds["embed"] += time.perf_counter() - t0
    records = []
    for i, work in enumerate(batch):
        decoded, path = work.decoded, work.file.path
        classes = embeddings.classes[i] if embeddings.classes else []
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
                class_ids=[c.class_id for c in classes],
                class_probs=[float(c.probability) for c in classes],
                tags=_tags(classes),
                vectors={name: vectors[i] for name, vectors in embeddings.vectors.items()},
            )
        )
    t0 = time.perf_counter()
    with db.connection() as conn:
        write_photos(conn, table, records)
    report.stage_seconds["write"] += time.perf_counter() - t0
    for work in batch:
        if work.stored is None:
            report.added += 1
        else:
            report.updated += 1
        work.decoded = work.prepared = None  # release the pixels
    progress.advance(len(batch))


def _prune(db: Database, table: DocumentTable, roots: Sequence[Path]) -> int:
    """Remove rows of files that were under a scanned folder and are gone from disk."""
    gone: list[str] = []
    with db.connection() as conn:
        for root in roots:
            root = Path(root).expanduser().absolute()
            if not root.is_dir():
                continue
            for photo_id, path in paths_under(conn, table, str(root).rstrip(os.sep) + os.sep):
                if not os.path.exists(path):
                    gone.append(photo_id)
        return table.delete(conn, gone)

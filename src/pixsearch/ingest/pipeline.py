"""The ingest pipeline: scan -> decide what changed -> read, decode, embed (the image stage) -> write (COPY)."""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Protocol, Sequence

import numpy as np

from pixsearch.ingest.changes import MovedFiles, fold_spellings, location, prune
from pixsearch.ingest.decode import DRAFT_SIZE, DecodedImage, content_hash, read_file_with_stat
from pixsearch.ingest.descriptions import GENERATED_CAPTION_FIELDS, Descriptions, read_descriptions, with_generated
from pixsearch.ingest.distributed import RayOptions, open_image_stage
from pixsearch.ingest.formats import companion_key
from pixsearch.ingest.layout import layout_signature
from pixsearch.ingest.objects import (ObjectFile, SourcesScan, describe_found, object_digest, object_gone_check,
                                      prefetching, prune_objects, read_object_file, read_options, read_sidecars,
                                      scan_sources, split_roots)
from pixsearch.ingest.ocr import OcrError, OcrUnavailable, TextBox, joined_text, shared_reader
from pixsearch.ingest.scan import FoundFile
from pixsearch.ingest.stage import ImageBytes, ImageStage, StageOptions
from pixsearch.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from pixsearch.models.base import Embedder, ImageEmbeddings
from pixsearch.models.hosted import ImageAtURL
from pixsearch.sources import Downloads, ReadOptions
from pixsearch.store import IndexStore, PhotoRecord, RowsRefused, StoredState

log = logging.getLogger(__name__)


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
    # A URL the model's service can fetch a photo from (path -> URL or None), for models that take one
    # (accepts_urls: Azure AI Vision): object-store photos with a SAS URL are then not sent as bytes. Object-store
    # sources: give a read-only, short-lived URL (a user-delegation SAS with sp=r and an expiry of about an hour; an
    # S3 presigned GET) for az:// / s3:// paths and None for local files; it is a credential: never log or store it.
    photo_url: Callable[[str], str | None] | None = None
    download_concurrency: int = 16  # object store photos being downloaded at once (ingest/objects.py)
    ray: RayOptions | None = None  # run the image stage on a Ray cluster (ingest/distributed.py); None: here


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
    captions: dict[str, Any] | None = None  # generated captions of the run: what they cost (service/captioning.py)
    faces: dict[str, Any] | None = None  # with faces on: what the face pass found (service/faces.FaceReport)

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
            **({"captions": self.captions} if self.captions is not None else {}),
            **({"faces": self.faces} if self.faces is not None else {}),
        }


@dataclass
class _Work:
    file: FoundFile
    stored: StoredState | None
    describe_only: bool = False  # the file is as indexed but its caption sidecars changed
    digest: str | None = None  # the content hash of the bytes read
    decoded: DecodedImage | None = None  # pixels released once prepared for the model
    embeddings: ImageEmbeddings | None = None  # the image stage's row for the photo
    described: Descriptions | None = None
    text_boxes: list[TextBox] | None = None  # OCR, in pixels of the original image
    layout: str | None = None
    ocr_seconds: float = 0.0
    moved_from: StoredState | None = None  # the row of a file with the same bytes that is gone from its path
    same_content: bool = False
    error: str | None = None


def ingest_paths(
    store: IndexStore,
    embedder: Embedder,
    roots: Sequence[Path | str],
    options: IngestOptions = IngestOptions(),
    *,
    columns: dict[str, str] | None = None,
    caption_field: str | None = None,
    progress: IngestProgress | None = None,
    loading: Callable[[int], ContextManager[Any]] | None = None,
    within: Sequence[Path] | None = None,
) -> IngestReport:
    """Index the images under `roots` into `store` with `embedder`, its vector spaces written to `columns` (space ->
    vector field; default: the fields named like the spaces), each photo's caption (title, description, keywords)
    embedded as text into `caption_field` when given. `loading(n)` wraps the writes of the n files to embed (the
    service's choice between incremental and bulk loading).

    Unchanged files (size + mtime, then content hash) are skipped; a file whose caption sidecars changed has its
    captions read again; a new file with the bytes of an indexed file that is gone from its path is that photo
    moved: its row follows it. Files that fail to read or decode are reported and skipped; each batch is written in
    its own transaction, and rows the database refuses are reported one by one while the rest of their batch is
    written. The database is asked a few questions per batch, never one per file. `within`: the folders `roots`
    were found in, by a folder watcher (see scan: then none of them is a root). A root may be an object store URL
    (az://, s3://, given as text): ingest/objects.py lists, reads and prunes those.

    With options.prune, the run first folds rows stored under another spelling of their path into their normal one
    (changes.fold_spellings), and afterwards removes the rows of files under the scanned folders that are gone, or
    that lie behind a symbolic link the scan did not follow (a watcher or a --follow-symlinks run put them there)."""
    progress = progress or NoProgress()
    report = IngestReport()
    started = time.perf_counter()
    reader = shared_reader() if options.ocr else None
    stage_options = StageOptions(
        batch_size=options.batch_size, workers=options.decode_workers, max_pixels=options.max_pixels,
        draft=(reader.max_side,) * 2 if reader is not None else DRAFT_SIZE)
    # Opened first: a Ray cluster that cannot do the work is one error before anything is written.
    with open_image_stage(embedder, stage_options, options.ray, roots) as stage:
        if options.prune:
            report.removed += fold_spellings(store)
        scanned, pending = _plan(store, roots, within, options, report, progress)
        progress.start(len(pending))
        writer = _Writer(store, embedder, columns, caption_field, report, progress)
        with (loading or _incremental)(sum(not w.describe_only for w in pending)):
            _run(stage, writer, pending, options, scanned)
    failed = {path for path, _ in report.failed}
    report.keys = [f.id for f in scanned.found if f.path not in failed]
    if options.prune:
        report.removed += prune(store, split_roots(roots)[0], scanned.links, {f.path for f in scanned.found})
        report.removed += prune_objects(store, scanned)
    if report.added or report.updated or report.removed:
        store.analyze()
    report.elapsed_seconds = time.perf_counter() - started
    return report


def _plan(store: IndexStore, roots: Sequence[Path | str], within: Sequence[Path] | None, options: IngestOptions,
          report: IngestReport, progress: IngestProgress) -> tuple[SourcesScan, list[_Work]]:
    """Scan the roots and compare what was found with the stored rows: what the scan saw, and the files to look at."""
    t0 = time.perf_counter()
    scanned = scan_sources(roots, within=within, follow_symlinks=options.follow_symlinks,
                           max_file_bytes=options.max_file_bytes, concurrency=options.download_concurrency)
    for path, reason in scanned.failures:
        report.failed.append((path, reason))
        progress.failure(path, reason)
    report.skipped.extend(scanned.skipped)
    report.scanned = len(scanned.found)
    stored = store.stored_states([f.id for f in scanned.found])
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
    return scanned, pending


@contextmanager
def _incremental(count: int) -> Iterator[None]:
    yield


def _run(stage: ImageStage, writer: "_Writer", pending: list[_Work], options: IngestOptions,
         scanned: SourcesScan) -> None:
    """Read and hash, find moved files (one query per batch), decode, embed and write the pending files, batch by
    batch, through the image stage: raw bytes wait for the move lookup, decoded pixels for the model. The read and
    views steps hold no state of this process, so the stage may run them on other machines (ingest/distributed.py);
    the move lookup runs here. Run here, object store photos are downloaded ahead (ingest/objects.py), so that
    downloads overlap decoding and embedding; on a cluster, each worker downloads what it decodes."""
    moved_files = MovedFiles(writer.store, gone=object_gone_check(scanned, _object_options(options)))
    batches = _Batches(writer, options.batch_size)
    stages = writer.report.stage_seconds
    pending = _renamed_objects(moved_files, pending, batches, options)
    here = isinstance(stage, ImageStage)
    downloads = Downloads(_object_options(options)) if here else None
    try:
        items = prefetching(pending, lambda w: None if w.describe_only else w.file, downloads) if here else pending
        for batch in stage.run(items, partial(_read, options=options, downloads=downloads),
                               sift=partial(_claimed, moved_files, options),
                               views=partial(_viewed, ocr=options.ocr, url_of=_url_of(writer, options))):
            stages["embed"] += batch.embed_seconds
            for result in batch:
                stages["decode"] += result.seconds
                work = result.item
                stages["ocr"] += work.ocr_seconds
                work.error, work.embeddings = result.error, result.embeddings
                batches.add(work)
    finally:
        if downloads is not None:
            downloads.close()
    batches.flush()


# -- object store photos (ingest/objects.py) -------------------------------------------------------------------------
def _object_options(options: IngestOptions) -> ReadOptions:
    return read_options(options.max_file_bytes, options.download_concurrency)


def _describe(file: FoundFile, options: IngestOptions, image: Any = None, exif: Any = None,
              data: bytes | None = None) -> Descriptions:
    """A photo's captions from its sidecars and embedded metadata, on disk or in an object store."""
    return describe_found(file, _object_options(options), image, exif, follow_symlinks=options.follow_symlinks,
                          data=data)


def _renamed_objects(moved_files: MovedFiles, pending: list[_Work], batches: "_Batches",
                     options: IngestOptions) -> list[_Work]:
    """Object store photos whose stated MD5 is that of an indexed photo that is gone: renamed (copy + delete, as
    object stores rename), so their rows follow them without a download (one lookup per batch). The rest, to read."""
    stated = [w for w in pending if w.stored is None and isinstance(w.file, ObjectFile) and w.file.md5]
    for start in range(0, len(stated), options.batch_size):
        chunk = stated[start:start + options.batch_size]
        for work, row in zip(chunk, moved_files.claim([w.file.md5 for w in chunk])):
            if row is not None:
                work.moved_from, work.digest = row, work.file.md5
                if row.sidecar_state != work.file.sidecar_state:
                    work.described = _describe(work.file, options)
                batches.add(work)
    return [w for w in pending if w.moved_from is None]


class _Batches:
    """Sorts what the image stage produced by what it needs written, and writes each kind a batch at a time."""

    def __init__(self, writer: "_Writer", batch_size: int):
        self.writer, self.batch_size = writer, batch_size
        self.photos: list[_Work] = []  # embedded, to write
        self.moves: list[_Work] = []  # rows to follow their files
        self.described: list[_Work] = []  # captions to read again
        self.touched: list[tuple[str, int, int]] = []  # new size/mtime, same bytes

    def add(self, work: _Work) -> None:
        writer = self.writer
        if work.error is not None:
            writer.report.failed.append((work.file.path, work.error))
            writer.progress.failure(work.file.path, work.error)
            writer.progress.advance()
        elif work.moved_from is not None:
            self._append(self.moves, work, writer.moves)
        elif work.describe_only:
            self._append(self.described, work, writer.descriptions)
        elif work.same_content:
            self.touched.append((work.file.id, work.file.size_bytes, work.file.mtime_ns))
            writer.report.unchanged += 1
            writer.progress.advance()
        else:
            self._append(self.photos, work, writer.photos)

    def _append(self, batch: list[_Work], work: _Work, write: Callable[[list[_Work]], None]) -> None:
        batch.append(work)
        if len(batch) >= self.batch_size:
            write(batch[:])
            batch.clear()

    def flush(self) -> None:
        self.writer.moves(self.moves)
        self.writer.descriptions(self.described)
        self.writer.photos(self.photos)
        if self.touched:
            self.writer.store.touch(self.touched)


def _read(work: _Work, options: IngestOptions, downloads: Downloads | None = None) -> ImageBytes | None:
    """Read and hash a file (in a pool thread): its bytes for the decode step, or None when it needs no decoding:
    a file with the bytes it was indexed with needs at most its captions read again."""
    path = work.file.path
    if work.describe_only:
        work.described = _describe(work.file, options)
        return None
    if isinstance(work.file, ObjectFile):
        data = read_object_file(work.file, _object_options(options), downloads)
        work.digest = digest = object_digest(work.file, data)
    else:
        data, info = read_file_with_stat(path, max_bytes=options.max_file_bytes,
                                         follow_symlinks=options.follow_symlinks)
        if (info.st_size, info.st_mtime_ns) != (work.file.size_bytes, work.file.mtime_ns):
            # changed since the scan: the row must describe the bytes read, or the next run would misjudge it
            work.file = replace(work.file, size_bytes=info.st_size, mtime_ns=info.st_mtime_ns)
        work.digest = digest = content_hash(data)
    if work.stored is not None and work.stored.content_hash == digest:
        work.same_content = True
        if work.stored.sidecar_state != work.file.sidecar_state:
            work.describe_only = True
            work.described = _describe(work.file, options, data=data)
        return None

    # The sidecars are read with the photo, so that describe(image, exif) needs no file: it may run on a machine
    # that decodes the photo but cannot see its folder (ingest/distributed.py); a partial, not a closure, to travel.
    sidecars = read_sidecars(work.file, _object_options(options), follow_symlinks=options.follow_symlinks)
    return ImageBytes(data, digest, partial(read_descriptions, work.file.path, sidecars=sidecars))


def _claimed(moved_files: MovedFiles, options: IngestOptions, works: list[_Work]) -> list[bool]:
    """Of a batch of files read, which to decode: a new file (no row at its path) that is an indexed photo moved
    from a path that is gone takes that row (moved_from) instead, with its captions read again if its caption
    sidecars differ from the row's. The rows are looked up for the whole batch at once."""
    new = [w for w in works if w.stored is None]
    for work, row in zip(new, moved_files.claim([w.digest for w in new])):
        if row is not None:
            work.moved_from = row
            if row.sidecar_state != work.file.sidecar_state:
                work.described = _describe(work.file, options)
    return [w.moved_from is None for w in works]


def _viewed(work: _Work, decoded: DecodedImage, *, ocr: bool,
            url_of: Callable[[str], str | None] | None = None) -> list[Any]:
    """What the decode step keeps of a photo before its pixels go (in a pool thread, maybe on another machine):
    its captions, text (OCR) and layout; the whole image is what the model embeds (or its URL, for a model whose
    service fetches it)."""
    work.decoded, work.described = decoded, decoded.described
    if ocr:
        work.text_boxes = _read_text(shared_reader(), work)
    work.layout = layout_signature(decoded.image)
    url = url_of(work.file.path) if url_of is not None else None
    return [ImageAtURL(url, decoded.image) if url else decoded.image]


def _url_of(writer: "_Writer", options: IngestOptions) -> Callable[[str], str | None] | None:
    """options.photo_url, when the model takes URLs."""
    return options.photo_url if getattr(writer.embedder, "accepts_urls", False) else None


def _read_text(reader: Any, work: _Work) -> list[TextBox] | None:
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
        work.ocr_seconds += time.perf_counter() - t0
    sx, sy = work.decoded.width / image.width, work.decoded.height / image.height
    return [TextBox(b.text, b.score, (round(b.box[0] * sx), round(b.box[1] * sy), round(b.box[2] * sx),
                                      round(b.box[3] * sy))) for b in boxes]


def _file_time(mtime_ns: int) -> datetime:
    """A photo's date when its EXIF has none: the file's modification time, as most photo libraries do."""
    return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc)


class _Writer:
    """Writes what the image stage produced, batch by batch (with the captions embedded), and keeps the report."""

    def __init__(self, store: IndexStore, embedder: Embedder, columns: dict[str, str] | None,
                 caption_field: str | None, report: IngestReport, progress: IngestProgress):
        self.store, self.embedder = store, embedder
        self.columns, self.caption_field = columns or {}, caption_field
        self.report, self.progress = report, progress

    def captions(self, described: Sequence[Descriptions | None],
                 generated: Sequence[dict[str, Any] | None] | None = None) -> list[np.ndarray | None]:
        """Each photo's caption embedded in the model's text space (None without a caption or a caption field),
        with its stored generated caption when given."""
        texts = [with_generated(d.searchable_text() if d is not None else "", g)
                 for d, g in zip(described, generated or [None] * len(described))]
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
        captions = self.captions([w.described for w in batch])
        report.stage_seconds["embed"] += time.perf_counter() - t0
        records = [self._record(work, caption) for work, caption in zip(batch, captions)]
        t0 = time.perf_counter()
        refused = _write_or_bisect(self.store, records)
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
            work.decoded = work.embeddings = None
        self.progress.advance(len(batch))

    def _record(self, work: _Work, caption: np.ndarray | None) -> PhotoRecord:
        decoded, described, path = work.decoded, work.described or Descriptions(), work.file.path
        taken_at, taken_at_source = decoded.taken_at, decoded.taken_at_source
        if taken_at is None and described.taken_at is not None:  # a date a person or tool wrote in XMP/IPTC
            taken_at, taken_at_source = described.taken_at, described.taken_at_source
        if taken_at is None:
            taken_at, taken_at_source = _file_time(work.file.mtime_ns), "file"
        embeddings = work.embeddings
        vectors = {self.columns.get(space, space): v[0] for space, v in embeddings.vectors.items()}
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
            extra=embeddings.fields[0] if embeddings.fields else {}, vectors=vectors,
        )

    def moves(self, moved: list[_Work]) -> None:
        """Rows of moved files follow them; captions are read again where the sidecars differ."""
        if not moved:
            return
        t0 = time.perf_counter()
        self.store.move_photos([(w.moved_from.id, location(w.file.path, w.file.size_bytes, w.file.mtime_ns))
                                for w in moved])
        self.report.stage_seconds["write"] += time.perf_counter() - t0
        self.report.moved += len(moved)
        self.progress.advance(len(moved))
        self.descriptions([w for w in moved if w.described is not None], advance=False)

    def descriptions(self, works: list[_Work], *, advance: bool = True) -> None:
        """Photos whose caption sidecars changed: their captions (and caption vectors) replaced."""
        if not works:
            return
        generated = self._generated([w.file.id for w in works])
        captions = self.captions([w.described for w in works], [generated.get(w.file.id) for w in works])
        rows = []
        for work, caption in zip(works, captions):
            d = work.described
            row = {self.store.spec.key_field: work.file.id, "title": d.title, "description": d.description,
                   "keywords": d.keywords or None, "sidecar_state": work.file.sidecar_state}
            if self.caption_field is not None:
                row[self.caption_field] = caption
            rows.append(row)
            self.report.warnings.extend((work.file.path, message) for message in d.warnings)
        self.store.update_descriptions(rows, self.caption_field)
        self.report.metadata_updated += len(works)
        if advance:
            self.progress.advance(len(works))


    def _generated(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The stored generated captions of these photos (kept when what people wrote changes), one query."""
        if self.caption_field is None or GENERATED_CAPTION_FIELDS[0] not in {f.name for f in self.store.spec.fields}:
            return {}
        return self.store.select(keys, GENERATED_CAPTION_FIELDS)


def _write_or_bisect(store: IndexStore, records: list[PhotoRecord]) -> dict[str, str]:
    """Write the batch in one transaction. If the database refuses it for something in its rows, write each half
    on its own (recursively), so every good row lands and each bad one is named with the database's reason.
    Returns id -> reason for the rows that were refused."""
    try:
        store.write_photos(records)
        return {}
    except RowsRefused as exc:
        if len(records) == 1:
            log.warning("the database refused %s: %s", records[0].path, exc)
            return {records[0].id: f"the database refused this photo's row: {exc}"}
    middle = len(records) // 2
    return {**_write_or_bisect(store, records[:middle]), **_write_or_bisect(store, records[middle:])}

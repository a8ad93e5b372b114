"""Index: what one index can do, for every front door (CLI, Python, REST, web)."""
from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from pixsearch.db import Database
from pixsearch.ingest import IngestOptions, IngestProgress, IngestReport, ingest_paths
from pixsearch.limits import MAX_DUPLICATE_GROUPS, MAX_TOP
from pixsearch.search import evaluation
from pixsearch.search.context import IndexModel, SearchContext
from pixsearch.search.expressions import Term
from pixsearch.search.embedding import combine_embedded, embed_terms
from pixsearch.search.execute import run as run_request
from pixsearch.search.request import SearchRequest, SearchResponse, query_terms
from pixsearch.service import documents, photos
from pixsearch.service.captions import upgrade_photo_index
from pixsearch.service.duplicates import DuplicateGroup, duplicate_groups
from pixsearch.store import (
    DocumentTable,
    Filter,
    IndexSpec,
    IndexStore,
    QueryOptions,
    SchemaError,
    SearchResult,
    get_index,
    read_snapshot,
    update_settings,
)
from pixsearch.store.schema import CAPTION_FIELD
from pixsearch.store.tables import iter_chunks

if TYPE_CHECKING:
    from pixsearch.service.engine import Engine
    from pixsearch.service.regions import RegionReport
    from pixsearch.service.reindex import ReindexReport

log = logging.getLogger(__name__)

IMAGE_QUERY_PREFIX = "image:"
VECTOR_BATCH = 5000
# When a load is large for its table, the ANN indexes are dropped, the rows loaded, and each index built once:
# inserting into a live HNSW graph row by row is ~5x slower than one build. "Large": at least BULK_MIN_ROWS rows, or
# at least BULK_MIN_SHARE of the rows already there (and BULK_FLOOR rows, so small first batches stay incremental).
BULK_MIN_ROWS = 10_000
BULK_MIN_SHARE = 0.2
BULK_FLOOR = 1_000


class ModelMismatchError(ValueError):
    """The index was built by a different model than the one loaded; mixing vector spaces gives nonsense."""


@dataclass(frozen=True)
class Query:
    """One search request: text or an image (a path or a PIL image), never both empty."""

    text: str | None = None
    image: str | Path | Image.Image | None = None

    @classmethod
    def parse_line(cls, line: str) -> "Query":
        """A batch-file line: plain text, or `image:PATH`."""
        line = line.strip()
        if line.startswith(IMAGE_QUERY_PREFIX):
            return cls(image=line[len(IMAGE_QUERY_PREFIX) :].strip())
        return cls(text=line)

    def describe(self) -> str:
        if self.image is not None:
            return f"{IMAGE_QUERY_PREFIX}{self.image if not isinstance(self.image, Image.Image) else '<image>'}"
        return self.text or ""


class Index:
    """One named index: writes, reads, searches, ANN builds and tuning. Opened by Engine.index()."""

    def __init__(self, engine: "Engine", spec: IndexSpec):
        self.engine = engine
        self.spec = spec
        self.table = DocumentTable(spec)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def db(self) -> Database:
        return self.engine.db

    def refresh(self) -> "Index":
        self.spec = get_index(self.db, self.name)
        self.table = DocumentTable(self.spec)
        return self

    @property
    def modelled(self) -> bool:
        return any(vf.model_id for vf in self.spec.vector_fields)

    def model(self) -> IndexModel:
        """The model this index was built with (loaded once per process), bound to the index's vector fields: each
        of the model's spaces must have a field holding that model's vectors, or searching would compare vectors
        of two different models."""
        if not self.modelled:
            raise ModelMismatchError(
                f"index {self.name!r} holds precomputed vectors and has no model: search it with a vector"
            )
        embedder = self.engine.model(self.spec.model or "offline")
        columns: dict[str, str] = {}
        for space in embedder.spaces.values():
            candidates = [vf for vf in self.spec.vector_fields if vf.model_id and vf.space_name == space.name]
            match = next((vf for vf in candidates if vf.model_id == space.model_id and vf.dims == space.dims), None)
            if match is None:
                found = ", ".join(f"{vf.name!r} from {vf.model_id} ({vf.dims}-d)" for vf in candidates) or "no field"
                raise ModelMismatchError(
                    f"index {self.name!r} has {found} for the {space.name!r} vectors that model {embedder.name!r} "
                    f"({space.model_id}, {space.dims}-d) produces. Vectors of two models cannot be mixed: search it "
                    f"with the model it was built with, or move it to another model with `pixsearch reindex "
                    f"{self.name} --model MODEL`."
                )
            columns[space.name] = match.name
        return IndexModel(embedder, columns)

    def search_context(self, *, allow_file_terms: bool = True) -> SearchContext:
        """What search needs of this index. allow_file_terms=False for requests from the network."""
        return SearchContext(
            store=IndexStore(self.db, self.spec),
            model=self.model if self.modelled else None,
            query_vectors=self.engine.query_vectors,
            open_image=self.engine.open_image,
            allow_file_terms=allow_file_terms,
        )

    # -- writes ----------------------------------------------------------------------------------------------------
    def add_paths(
        self,
        paths: Sequence[str | Path],
        *,
        prune: bool = True,
        follow_symlinks: bool = False,
        progress: IngestProgress | None = None,
        roots: Sequence[Path] | None = None,
        ocr: bool | None = None,
    ) -> IngestReport:
        """Index photo files and folders (see ingest.pipeline); the folders are recorded as the index's roots (or
        `roots`, when given), the only places the server opens photo files for thumbnails. ocr: read text in the
        photos (True/False is remembered for the index's later runs; None: as the index is set up)."""
        if self.spec.kind != "photos":
            raise SchemaError(f"index {self.name!r} is not a photo index: add vectors to it instead")
        upgrade_photo_index(self)
        if ocr is not None and ocr != bool(self.spec.settings.get("ocr")):
            if ocr:
                from pixsearch.ingest.ocr import shared_reader

                shared_reader().load()  # fails now, with how to install it, rather than as a warning per photo
            self.spec = update_settings(self.db, self.name, {"ocr": ocr or None})
            self.table = DocumentTable(self.spec)
        settings = self.engine.settings
        options = IngestOptions(
            batch_size=settings.batch_size,
            decode_workers=settings.decode_workers,
            prune=prune,
            follow_symlinks=follow_symlinks,
            max_file_bytes=settings.max_file_bytes,
            max_pixels=settings.max_image_pixels,
            ocr=bool(self.spec.settings.get("ocr")),
        )
        model = self.model()
        photos.record_roots(self, [Path(p) for p in (roots if roots is not None else paths)], follow_symlinks)
        caption = next((vf.name for vf in self.spec.vector_fields if vf.name == CAPTION_FIELD), None)
        report = ingest_paths(self.db, self.table, model.embedder, [Path(p) for p in paths], options,
                              columns=model.columns, caption_field=caption, progress=progress, loading=self.loading)
        auto_regions = self.spec.settings.get("regions", {}).get("auto")
        if auto_regions and report.embedded_keys:  # regions of new and changed photos, as the index was set up
            self.add_regions(auto_regions, photo_keys=report.embedded_keys)
        if report.embedded and model.text_field is not None:
            # Ready the text tower now (its one-time ONNX export needs torch, which ingest has loaded anyway), so the
            # first search is quick and a search process never imports torch.
            model.embed_text("warm up")
        return report

    def duplicates(self, threshold: float | None = None, *, same_frame: bool = True,
                   max_groups: int = MAX_DUPLICATE_GROUPS) -> list[DuplicateGroup]:
        """Groups of near-duplicates with their documents (service/duplicates.py)."""
        return duplicate_groups(self, threshold, same_frame=same_frame, with_documents=True, max_groups=max_groups)

    def apply_folder_changes(self, changed: set[str], deleted: set[str], moved: list[tuple[str, str]], *,
                             roots: Sequence[Path], follow_symlinks: bool = False) -> IngestReport:
        """One batch of a folder watcher's changes (service/photos.py apply_folder_changes)."""
        return photos.apply_folder_changes(self, changed, deleted, moved, roots=roots, follow_symlinks=follow_symlinks)

    def add_vectors(
        self,
        ids: Sequence[str],
        vectors: np.ndarray | Mapping[str, np.ndarray],
        documents: Sequence[Mapping[str, Any]] | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Upsert precomputed vectors (an array for the index's one vector field, or field -> array) with optional
        metadata per id, in batches of VECTOR_BATCH rows, each batch one transaction."""
        if not isinstance(vectors, Mapping):
            vectors = {self.spec.vector_field(None).name: vectors}
        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        for name, array in vectors.items():
            vf = self.spec.vector_field(name)
            array = np.asarray(array)
            if array.ndim != 2 or array.shape != (len(ids), vf.dims):
                raise ValueError(
                    f"vector field {name!r} needs an array of shape ({len(ids)}, {vf.dims}), got {array.shape}"
                )
        if documents is not None and len(documents) != len(ids):
            raise ValueError(f"got {len(documents)} documents for {len(ids)} ids")
        known = {f.name for f in self.spec.fields}
        for doc in documents or ():
            unknown = set(doc) - known
            if unknown:
                raise SchemaError(f"unknown field(s) {', '.join(sorted(unknown))} in index {self.name!r}")
        written = 0
        with self.loading(len(ids)):
            for chunk in iter_chunks(range(len(ids)), VECTOR_BATCH):
                rows = []
                for i in chunk:
                    row = dict(documents[i]) if documents is not None else {}
                    row[self.spec.key_field] = ids[i]
                    for name, array in vectors.items():
                        row[name] = array[i]
                    rows.append(row)
                self.write_rows(rows)
                written += len(rows)
                if progress:
                    progress(len(rows))
            with self.db.connection() as conn:
                self.table.analyze(conn)
        return written

    def reindex(self, model: str, *, drop_old: bool = False, progress: IngestProgress | None = None) -> "ReindexReport":
        """Move the index to another model without downtime (service/reindex.py); resumes an interrupted one."""
        from pixsearch.service.reindex import reindex

        return reindex(self, model, drop_old=drop_old, progress=progress)

    def abort_reindex(self) -> list[str]:
        """Undo a re-index that has not switched yet; the fields it had added."""
        from pixsearch.service.reindex import abort

        return abort(self)

    # -- bulk loads --------------------------------------------------------------------------------------------------
    def bulk_wanted(self, incoming: int) -> bool:
        """Whether a load of `incoming` rows takes the bulk path (see BULK_MIN_ROWS)."""
        if not any(vf.algorithm != "exact" for vf in self.spec.vector_fields):
            return False
        if incoming >= BULK_MIN_ROWS:
            return True
        return incoming >= BULK_FLOOR and incoming >= BULK_MIN_SHARE * self.count()

    @contextmanager
    def loading(self, incoming: int) -> Iterator[bool]:
        """Around a load of `incoming` rows: the bulk path when it is large (yields True): ANN indexes dropped
        first and each built once afterwards, even if the load fails. The index's settings mark a bulk load while it
        runs: searches meanwhile are exact scans (correct, slower) and report the build's progress; a load killed in
        between leaves the mark, and the next load (or `pixsearch indexes rebuild`) builds what is missing."""
        self.ensure_ann_indexes()
        if not self.bulk_wanted(incoming):
            yield False
            return
        self.spec = update_settings(self.db, self.name, {"bulk_load": {
            "started_at": datetime.now(timezone.utc).isoformat(), "rows": incoming}})
        self.table = DocumentTable(self.spec)
        self.drop_ann_indexes()
        try:
            yield True
        finally:
            self.ensure_ann_indexes()

    def ensure_ann_indexes(self) -> list[str]:
        """Build every ANN index that is missing or invalid (after a killed bulk load or a failed concurrent build);
        clears the bulk-load mark. IVFFlat indexes are built only once the table has rows (they learn from them)."""
        with self.db.connection() as conn:
            ready = self.table.ann_indexes_ready(conn)
            rows = self.table.count(conn) if not all(ready.values()) else None
        built = []
        for name, ok in ready.items():
            vf = self.spec.vector_field(name)
            if ok or (vf.algorithm == "ivfflat" and not rows and not self.spec.settings.get("built", {}).get(name)):
                continue
            self.build(name)
            built.append(name)
        if self.spec.settings.get("bulk_load"):
            self.spec = update_settings(self.db, self.name, {"bulk_load": None})
            self.table = DocumentTable(self.spec)
        return built

    def all_vectors(self, field: str | None = None) -> tuple[np.ndarray, list[str]]:
        """Every stored vector of one field (float32, key order) and their keys, from one snapshot."""
        vf = self.spec.vector_field(field)
        with read_snapshot(self.db) as conn:
            chunks = list(self.table.iter_vectors(conn, vf.name))
        keys = [key for chunk_keys, _ in chunks for key in chunk_keys]
        array = np.concatenate([block for _, block in chunks]) if chunks else np.zeros((0, vf.dims), np.float32)
        return array, keys

    def export_vectors(self, path: Path | str, *, field: str | None = None, ids_path: Path | str | None = None) -> int:
        """Write every stored vector of one field to a .npy file (float32, key order) and, with ids_path, their ids
        one per line; the number written. Streams through a binary server-side cursor."""
        vf = self.spec.vector_field(field)
        path = Path(path)
        with read_snapshot(self.db) as conn:  # the count and the rows from one snapshot, whatever is written meanwhile
            total = self.table.count_vectors(conn, vf.name)
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, vf.dims))
            written = 0
            with open(ids_path, "w", encoding="utf-8") if ids_path else nullcontext() as ids_file:
                for keys, block in self.table.iter_vectors(conn, vf.name):
                    out[written : written + len(keys)] = block
                    written += len(keys)
                    if ids_file is not None:
                        ids_file.write("".join(f"{key}\n" for key in keys))
            out.flush()
            del out
        return written

    def write_rows(
        self, rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] | None = None, insert_missing: bool = True
    ) -> set[str]:
        """Write rows in one transaction (see DocumentTable.write for whole vs partial documents); the keys written."""
        with self.db.connection() as conn:
            return self.table.write(conn, list(rows), columns=columns, insert_missing=insert_missing)

    def write_documents(self, actions: list[documents.DocumentAction]) -> list[documents.DocumentResult]:
        """A batch of upload / merge / mergeOrUpload / delete actions with Azure's semantics (service.documents)."""
        return documents.write_documents(self, actions)

    def get(self, ids: Sequence[str], *, vectors: bool = True) -> dict[str, dict[str, Any]]:
        """Stored documents by id (missing ids are absent from the result); vectors as float32 arrays."""
        columns = self.table.retrievable + ([vf.name for vf in self.spec.vector_fields] if vectors else [])
        with self.db.connection() as conn:
            found = self.table.select(conn, [str(i) for i in ids], columns)
        if vectors:
            for doc in found.values():
                for vf in self.spec.vector_fields:
                    value = doc.get(vf.name)
                    if value is not None:
                        doc[vf.name] = np.asarray(value.to_numpy(), dtype=np.float32)
        return found

    def remove(self, ids: Sequence[str]) -> int:
        with self.db.connection() as conn:
            return self.table.delete(conn, [str(i) for i in ids])

    def add_image_bytes(self, filename: str, data: bytes) -> tuple[str, IngestReport]:
        """Index an uploaded image (kept under PIXSEARCH_HOME/uploads/<index>/); returns its key."""
        return photos.add_image_bytes(self, filename, data)

    def remove_unfinished_uploads(self) -> list[str]:
        """Remove uploaded files whose row never committed (their process was killed in between)."""
        return photos.remove_unfinished_uploads(self)

    def add_regions(self, source: "str | Path | dict", *, photo_keys: Sequence[str] | None = None) -> "RegionReport":
        """Embed regions (object patches) of the photos: `grid`, or boxes from a COCO JSON / CSV / JSON Lines file
        (service/regions.py)."""
        from pixsearch.service.regions import add_regions

        return add_regions(self, source, photo_keys=photo_keys)

    def thumbnail(self, key: str, size: int = 256) -> bytes:
        """A WebP thumbnail (longest side `size`: 128, 256, 512 or 1024) of a stored photo."""
        return photos.thumbnail(self, key, size)

    def count(self) -> int:
        with self.db.connection() as conn:
            return self.table.count(conn)

    def stats(self) -> dict[str, Any]:
        with self.db.connection() as conn:
            return self.table.stats(conn)

    def build(self, field: str | None = None, *, progress: Callable[[dict], None] | None = None) -> list[dict]:
        """(Re)build the ANN index of one or all vector fields; remembers what was built (IVFFlat lists)."""
        targets = [self.spec.vector_field(field)] if field else list(self.spec.vector_fields)
        built = []
        for vf in targets:
            if vf.algorithm == "exact":
                continue
            info = self.table.build_index(self.db, vf, progress=progress)
            with self.db.connection() as conn:
                self.table.analyze(conn)
            built.append(info)
            self.spec = update_settings(self.db, self.name, {"built": {vf.name: info}})
            self.table = DocumentTable(self.spec)
        return built

    def drop_ann_indexes(self, field: str | None = None) -> list[str]:
        """Drop the ANN index of one or all vector fields, e.g. before a bulk add_vectors: inserting into a live HNSW
        graph is far slower than one build() afterwards. Until then searches of those fields scan exactly."""
        targets = [self.spec.vector_field(field)] if field else list(self.spec.vector_fields)
        with self.db.connection() as conn:
            return [self.table.ann_index_name(vf) for vf in targets if self.table.drop_ann_index(conn, vf)]

    # -- search ----------------------------------------------------------------------------------------------------
    def query_vector(self, query: Query) -> tuple[str, np.ndarray]:
        """The vector field and vector a query searches (the same resolution search uses)."""
        terms = query_terms(SearchRequest(text=query.text, image=query.image))
        if not terms:
            raise ValueError("empty query: give search text or --image FILE")
        return self.resolve(terms)

    def resolve(self, terms: Sequence[Term], field: str | None = None) -> tuple[str, np.ndarray]:
        """The vector field and combined query vector of parsed query terms."""
        ctx = self.search_context()
        embedded = embed_terms(ctx, terms, field)
        with ctx.store.reader() as reader:
            return embedded.field, combine_embedded(reader, embedded)

    def query(self, request: SearchRequest, *, allow_file_terms: bool = True) -> SearchResponse:
        """The full search: query expressions, filters, vector/keyword/hybrid modes, cutoffs, sorting, paging,
        facets (see search/request.py). allow_file_terms=False refuses `image:PATH` (requests from the network)."""
        return run_request(self.search_context(allow_file_terms=allow_file_terms), request)

    def search(
        self,
        query: Query | str,
        k: int = 10,
        *,
        filter: str | Filter | None = None,
        mode: str | None = None,
        options: QueryOptions | None = None,
    ) -> SearchResponse:
        """Search by text (an expression: plain text, or terms like `"beach" + "sunset" - "people"`) or by image."""
        if isinstance(query, str):
            query = Query(text=query)
        if query.image is None and not (query.text or "").strip():
            raise ValueError("empty query: give search text or --image FILE")
        if not 1 <= k <= MAX_TOP:
            raise ValueError(f"k must be between 1 and {MAX_TOP}, got {k}")
        return self.query(SearchRequest(text=query.text, image=query.image, filter=filter, mode=mode, top=k,
                                        options=options or QueryOptions()))

    def search_vector(
        self,
        vector: Any,
        k: int = 10,
        *,
        field: str | None = None,
        filter: Filter | None = None,
        options: QueryOptions | None = None,
    ) -> SearchResult:
        if not 1 <= k <= MAX_TOP:
            raise ValueError(f"k must be between 1 and {MAX_TOP}, got {k}")
        options = options or QueryOptions()
        with self.db.connection() as conn:  # one statement: the common case needs no snapshot
            result = self.table.search(conn, field, vector, k, filter=filter, options=options, count_if_short=False)
        if len(result.hits) == k:
            return result
        # Short: the hits and the count of what matches come from one snapshot, so the reason given is right.
        with read_snapshot(self.db) as conn:
            return self.table.search(conn, field, vector, k, filter=filter, options=options)

    def explain(
        self,
        query: Query | str | None = None,
        k: int = 10,
        *,
        vector: Any = None,
        field: str | None = None,
        filter: Filter | None = None,
        options: QueryOptions | None = None,
        analyze: bool = False,
    ) -> str:
        if vector is None:
            if isinstance(query, str):
                query = Query(text=query)
            field, vector = self.query_vector(query or Query())
        with self.db.connection() as conn:
            return self.table.explain(
                conn, field, vector, k, filter=filter, options=options or QueryOptions(), analyze=analyze
            )

    # -- recall ----------------------------------------------------------------------------------------------------
    def evaluate(
        self, *, field: str | None = None, k: int = 10, sample: int = 100, options: QueryOptions | None = None
    ) -> evaluation.Evaluation:
        """Recall@k of the ANN index against exact search, on `sample` stored vectors used as queries."""
        vf = self.spec.vector_field(field)
        store = IndexStore(self.db, self.spec)
        truth = evaluation.ground_truth(store, vf, k, sample)
        return evaluation.evaluate(store, vf, k, truth, options or QueryOptions())

    def tune(
        self, target_recall: float = 0.95, *, field: str | None = None, k: int = 10, sample: int = 100
    ) -> dict[str, Any]:
        """Find the smallest ef_search (HNSW) or probes (IVFFlat) reaching `target_recall` and store it in the index
        settings, where later searches pick it up."""
        if not 0 < target_recall <= 1:
            raise ValueError("target recall must be in (0, 1]")
        vf = self.spec.vector_field(field)
        if vf.algorithm == "exact":
            raise SchemaError(f"vector field {vf.name!r} uses exact search: recall is always 1, nothing to tune")
        lists = self.spec.settings.get("built", {}).get(vf.name, {}).get("lists")
        if vf.algorithm == "ivfflat" and lists is None:
            raise SchemaError(f"the IVFFlat index of {vf.name!r} is not built yet: pixsearch indexes rebuild {self.name}")
        store = IndexStore(self.db, self.spec)
        truth = evaluation.ground_truth(store, vf, k, sample)
        chosen, tried, reached = evaluation.tune(store, vf, k, truth, target_recall, lists)
        if chosen is None:
            raise SchemaError("the index is empty: nothing to tune on")
        tuned = {**chosen.settings, "target_recall": target_recall, "recall": round(chosen.recall, 4), "k": k,
                 "reached": reached, "index_used": chosen.index_used}
        self.spec = update_settings(self.db, self.name, {"tuned": {vf.name: tuned}})
        self.table = DocumentTable(self.spec)
        return {"field": vf.name, "tuned": tuned, "tried": [t.to_json() for t in tried]}

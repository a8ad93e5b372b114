"""The one façade every front door (CLI, Python, REST, web) goes through: Engine opens indexes, Index does the work."""
from __future__ import annotations

import io
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from pixsearch.config import Settings
from pixsearch.db import Database, open_database
from pixsearch.ingest import IngestProgress, IngestReport, ingest_paths
from pixsearch.ingest.decode import DecodeError, decode_bytes, read_and_decode
from pixsearch.ingest.scan import photo_id
from pixsearch.models import load_embedder
from pixsearch.models.base import Embedder
from pixsearch.search import evaluation
from pixsearch.search.request import QueryVectorCache, SearchRequest, SearchResponse, query_terms, resolve_vector
from pixsearch.search.request import run as run_request
from pixsearch.store import (
    PHOTO_FIELDS,
    DocumentTable,
    Field,
    Filter,
    IndexNotFoundError,
    IndexSpec,
    QueryOptions,
    SchemaError,
    SearchResult,
    VectorField,
    create_index,
    delete_index,
    get_index,
    list_indexes,
    migrate,
    rename_index,
    update_settings,
)
from pixsearch.store import keys
from pixsearch.store.tables import iter_chunks

log = logging.getLogger(__name__)

MAX_K = 1000
IMAGE_QUERY_PREFIX = "image:"
VECTOR_BATCH = 5000


UPLOAD_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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


class Engine:
    """Owns the database connection and the embedder; both are opened on first use."""

    def __init__(self, settings: Settings | None = None, *, embedder: Embedder | None = None, **overrides: Any):
        self.settings = settings or Settings.load(**overrides)
        self._db: Database | None = None
        self._embedder = embedder
        # A server's first requests arrive together on several threads: one of them opens, the others wait.
        self._db_lock = threading.Lock()
        self._embedder_lock = threading.Lock()
        self.query_vectors = QueryVectorCache()

    @property
    def db(self) -> Database:
        if self._db is None:
            with self._db_lock:
                if self._db is None:
                    db = open_database(self.settings)
                    migrate(db)
                    self._db = db
        return self._db

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            with self._embedder_lock:
                if self._embedder is None:
                    self._embedder = load_embedder(self.settings.model, cache_dir=self.settings.cache_dir)
        return self._embedder

    def index(self, name: str | None = None, *, create: bool = False, **vector_options: Any) -> "Index":
        """Open the index `name` (default from settings). With create=True a missing index is made as a photo
        index for the loaded model; `vector_options` (algorithm, storage, metric, params) shape its vector fields."""
        name = name or self.settings.index
        try:
            spec = get_index(self.db, name)
        except IndexNotFoundError:
            if not create:
                raise IndexNotFoundError(
                    f"no index named {name!r}: index some photos first (pixsearch index PATH --index {name})"
                ) from None
            spec = self.create_photo_index(name, **vector_options).spec
        return Index(self, spec)

    def create_photo_index(self, name: str, **vector_options: Any) -> "Index":
        vector_fields = [
            VectorField(name=s.name, dims=s.dims, model_id=s.model_id, metric=s.metric, **vector_options)
            for s in self.embedder.spaces.values()
        ]
        return Index(self, create_index(self.db, name, vector_fields, PHOTO_FIELDS, kind="photos"))

    def create_index(
        self, name: str, vector_fields: Sequence[VectorField], fields: Sequence[Field] = (), *, key_field: str = "id"
    ) -> "Index":
        """An index of documents with precomputed vectors (no model): a key, metadata fields, vector fields."""
        return Index(self, create_index(self.db, name, list(vector_fields), tuple(fields), key_field=key_field))

    def list_indexes(self) -> list[IndexSpec]:
        return list_indexes(self.db)

    def delete_index(self, name: str) -> None:
        delete_index(self.db, name)

    def rename_index(self, name: str, new_name: str) -> "Index":
        return Index(self, rename_index(self.db, name, new_name))

    # -- API keys (admin: everything; query: search and read) --------------------------------------------------------
    def create_api_key(self, role: str, name: str = "") -> tuple[keys.ApiKey, str]:
        return keys.create_key(self.db, role, name)

    def list_api_keys(self) -> list[keys.ApiKey]:
        return keys.list_keys(self.db)

    def revoke_api_key(self, key_id: str) -> bool:
        return keys.revoke_key(self.db, key_id)

    def api_key_role(self, secret: str) -> str | None:
        return keys.role_for(self.db, secret)

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Index:
    def __init__(self, engine: Engine, spec: IndexSpec):
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

    def _checked_embedder(self) -> Embedder:
        modelled = [vf for vf in self.spec.vector_fields if vf.model_id]
        if not modelled:
            raise ModelMismatchError(
                f"index {self.name!r} holds precomputed vectors and has no model: search it with a vector"
            )
        embedder = self.engine.embedder
        for vf in modelled:
            space = embedder.spaces.get(vf.name)
            if space is None or space.model_id != vf.model_id or space.dims != vf.dims:
                found = f"{space.model_id} ({space.dims}-d)" if space else "nothing"
                raise ModelMismatchError(
                    f"index {self.name!r} holds {vf.name!r} vectors from model {vf.model_id} ({vf.dims}-d), but the "
                    f"loaded model {embedder.model_id!r} produces {found} for that field. Search it with the model it "
                    "was built with, or index into a new index (--index NAME)."
                )
        return embedder

    # -- writes ----------------------------------------------------------------------------------------------------
    def add_paths(
        self, paths: Sequence[str | Path], *, prune: bool = True, progress: IngestProgress | None = None
    ) -> IngestReport:
        if self.spec.kind != "photos":
            raise SchemaError(f"index {self.name!r} is not a photo index: add vectors to it instead")
        return ingest_paths(
            self.db,
            self.table,
            self._checked_embedder(),
            [Path(p) for p in paths],
            batch_size=self.engine.settings.batch_size,
            decode_workers=self.engine.settings.decode_workers,
            prune=prune,
            progress=progress,
        )

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
        written = 0
        for chunk in iter_chunks(range(len(ids)), VECTOR_BATCH):
            rows = []
            for i in chunk:
                row = dict(documents[i]) if documents is not None else {}
                unknown = set(row) - known
                if unknown:
                    raise SchemaError(f"unknown field(s) {', '.join(sorted(unknown))} in index {self.name!r}")
                row[self.spec.key_field] = ids[i]
                for name, array in vectors.items():
                    row[name] = array[i]
                rows.append(row)
            with self.db.connection() as conn:
                self.table.write(conn, rows)
            written += len(rows)
            if progress:
                progress(len(rows))
        with self.db.connection() as conn:
            self.table.analyze(conn)
        return written

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
        """Index an uploaded image: checked by decoding, kept under PIXSEARCH_HOME/uploads/<index>/ (named by its
        content hash, so re-uploading the same bytes is a no-op), then indexed like any file. Returns its key."""
        if self.spec.kind != "photos":
            raise SchemaError(f"index {self.name!r} is not a photo index: images cannot be added to it")
        decoded = decode_bytes(data)
        suffix = UPLOAD_SUFFIXES.get(decoded.format)
        if suffix is None:
            raise DecodeError(f"unsupported image format {decoded.format}; send JPEG, PNG, WebP, GIF, BMP or TIFF")
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename or "upload").stem).strip("-.")[:60] or "upload"
        folder = self.engine.settings.home / "uploads" / self.name
        folder.mkdir(parents=True, exist_ok=True)
        same_bytes = sorted(folder.glob(f"{decoded.content_hash[:16]}-*"))
        path = same_bytes[0] if same_bytes else folder / f"{decoded.content_hash[:16]}-{stem}{suffix}"
        if not path.exists():
            _write_atomically(path, data)
        report = self.add_paths([path], prune=False)
        return photo_id(str(path)), report

    def thumbnail(self, key: str, size: int = 256) -> bytes:
        """A WebP thumbnail (longest side `size`) of a stored photo, cached by content hash."""
        if not 16 <= size <= 1024:
            raise ValueError("thumbnail size must be between 16 and 1024")
        with self.db.connection() as conn:
            row = self.table.select(conn, [key], ["path", "content_hash"]).get(key)
        if row is None:
            raise LookupError(f"no photo {key!r} in index {self.name!r}")
        cached = self.engine.settings.cache_dir / "thumbnails" / self.name / f"{key}-{size}-{row['content_hash'][:16]}.webp"
        if cached.exists():
            return cached.read_bytes()
        image = read_and_decode(row["path"]).image
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "WEBP", quality=80)
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(cached, buffer.getvalue())
        return buffer.getvalue()

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
        return resolve_vector(self, terms, None)

    def query(self, request: SearchRequest) -> SearchResponse:
        """The full search: query expressions, filters, vector/keyword/hybrid modes, cutoffs, sorting, paging,
        facets (see search/request.py)."""
        return run_request(self, request)

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
        request = SearchRequest(text=query.text, image=query.image, filter=filter, mode=mode, top=k,
                                options=options or QueryOptions())
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        return self.query(request)

    def search_vector(
        self,
        vector: Any,
        k: int = 10,
        *,
        field: str | None = None,
        filter: Filter | None = None,
        options: QueryOptions | None = None,
    ) -> SearchResult:
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        with self.db.connection() as conn:
            return self.table.search(conn, field, vector, k, filter=filter, options=options or QueryOptions())

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
        truth = evaluation.ground_truth(self.db, self.table, vf, k, sample)
        return evaluation.evaluate(self.db, self.table, vf, k, truth, options or QueryOptions())

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
        truth = evaluation.ground_truth(self.db, self.table, vf, k, sample)
        chosen, tried, reached = evaluation.tune(self.db, self.table, vf, k, truth, target_recall, lists)
        if chosen is None:
            raise SchemaError("the index is empty: nothing to tune on")
        tuned = {**chosen.settings, "target_recall": target_recall, "recall": round(chosen.recall, 4), "k": k,
                 "reached": reached, "index_used": chosen.index_used}
        self.spec = update_settings(self.db, self.name, {"tuned": {vf.name: tuned}})
        self.table = DocumentTable(self.spec)
        return {"field": vf.name, "tuned": tuned, "tried": [t.to_json() for t in tried]}

"""Engine: the database, the loaded models and the caches one process shares; it opens indexes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from pixsearch.config import Settings
from pixsearch.db import Database, PoolStatus, open_database
from pixsearch.ingest.decode import decode_bytes, read_and_decode
from pixsearch.models import load_embedder
from pixsearch.models.base import Embedder
from pixsearch.models.hosted import HostedOptions
from pixsearch.search.context import QueryVectorCache
from pixsearch.service import photos
from pixsearch.service.captions import caption_vector_field
from pixsearch.service.index import Index
from pixsearch.service.thumbnails import ThumbnailCache
from pixsearch.store import (
    PHOTO_FIELDS,
    Field,
    IndexNotFoundError,
    IndexSpec,
    VectorField,
    create_index,
    delete_index,
    distribute_index,
    get_index,
    list_indexes,
    migrate,
    rename_index,
)
from pixsearch.store import keys

# Loaded models kept per process: a server may serve indexes of a few models; each holds hundreds of MB.
MODEL_CACHE_SIZE = 3


class Engine:
    """Owns the database connection and the loaded models; both are opened on first use.

    `embedder`: an already loaded model to use for its name (tests and benchmarks share one).
    `statement_timeout_s`: bound on every SQL statement (the API server sets it from settings.api_statement_timeout).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        embedder: Embedder | None = None,
        statement_timeout_s: float | None = None,
        **overrides: Any,
    ):
        self.settings = settings or Settings.load(**overrides)
        self.statement_timeout_s = statement_timeout_s
        self._db: Database | None = None
        # A server's first requests arrive together on several threads: one of them opens, the others wait.
        self._db_lock = threading.Lock()
        self._models: OrderedDict[str, Embedder] = OrderedDict()
        self._pinned: dict[str, Embedder] = {embedder.name: embedder} if embedder is not None else {}
        self._models_lock = threading.Lock()
        self.query_vectors = QueryVectorCache()
        # photo indexes whose uploads folder was checked for files of unfinished uploads since this engine started
        self.uploads_checked: set[str] = set()
        # (index, model) pairs brought up to this release's photo fields since this engine started (service/captions)
        self.upgraded: set[tuple[str, str | None]] = set()
        self.thumbnails = ThumbnailCache(self.settings.cache_dir / "thumbnails", int(self.settings.thumbnail_cache_mb * 1e6))

    @property
    def db(self) -> Database:
        if self._db is None:
            with self._db_lock:
                if self._db is None:
                    db = open_database(self.settings, statement_timeout_s=self.statement_timeout_s)
                    migrate(db)
                    self._db = db
        return self._db

    def model(self, name: str | None = None) -> Embedder:
        """The model registered as `name` (default: the configured one), loaded once per process and kept in a
        small LRU cache, so one server can serve indexes built with different models."""
        name = name or self.settings.model
        if name in self._pinned:
            return self._pinned[name]
        with self._models_lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            model = load_embedder(name, cache_dir=self.settings.cache_dir,
                                  hosted=HostedOptions.from_settings(self.settings), device=self.settings.device)
            self._models[name] = model
            while len(self._models) > MODEL_CACHE_SIZE:
                self._models.popitem(last=False)
            return model

    @property
    def embedder(self) -> Embedder:
        """The configured default model (what `pixsearch index` uses for a new index)."""
        return self.model()

    def open_image(self, value: str | Path | bytes) -> Image.Image:
        """A query image from a file (the CLI's --image, image:PATH) or bytes (uploads), within the size limits."""
        if isinstance(value, (bytes, bytearray)):
            decoded = decode_bytes(bytes(value), max_pixels=self.settings.max_image_pixels)
        else:
            decoded = read_and_decode(str(value), max_bytes=self.settings.max_file_bytes,
                                      max_pixels=self.settings.max_image_pixels)
        return decoded.image

    def index(self, name: str | None = None, *, create: bool = False, model: str | None = None,
              **vector_options: Any) -> Index:
        """Open the index `name` (default from settings). With create=True a missing index is made as a photo
        index for `model` (default: the configured model); `vector_options` (algorithm, storage, metric, params)
        shape its vector fields. An existing index always keeps the model it was built with."""
        name = name or self.settings.index
        try:
            spec = get_index(self.db, name)
        except IndexNotFoundError:
            if not create:
                raise IndexNotFoundError(
                    f"no index named {name!r}: index some photos first (pixsearch index PATH --index {name})"
                ) from None
            return self.create_photo_index(name, model=model, **vector_options)
        if model is not None and spec.model is not None and self.model(model).name != spec.model:
            raise ValueError(
                f"index {name!r} uses model {spec.model!r}; to move it to {model!r}: pixsearch reindex {name} "
                f"--model {model}"
            )
        return Index(self, spec)

    def _shards(self, distributed: bool | None) -> int | None:
        """None: a local table; else the shard count for create_distributed_table (0: Citus' default)."""
        if distributed is None:
            distributed = self.settings.distribute
        return self.settings.shards if distributed else None

    def create_photo_index(self, name: str, *, model: str | None = None, distributed: bool | None = None,
                           **vector_options: Any) -> Index:
        """A photo index for `model`: the photo fields plus the model's own fields, and its vector fields.
        distributed (default: the `distribute` setting) shards it across a Citus cluster's workers."""
        embedder = self.model(model)
        vector_fields = [
            VectorField(name=s.name, dims=s.dims, model_id=s.model_id, metric=s.metric, **vector_options)
            for s in embedder.spaces.values()
        ]
        caption = caption_vector_field(embedder, vector_fields)
        if caption is not None:
            vector_fields.append(caption)
        fields = PHOTO_FIELDS + tuple(embedder.photo_fields)
        return Index(self, create_index(self.db, name, vector_fields, fields, kind="photos", model=embedder.name,
                                        shards=self._shards(distributed)))

    def create_index(
        self, name: str, vector_fields: Sequence[VectorField], fields: Sequence[Field] = (), *, key_field: str = "id",
        distributed: bool | None = None,
    ) -> Index:
        """An index of documents with precomputed vectors (no model): a key, metadata fields, vector fields."""
        return Index(self, create_index(self.db, name, list(vector_fields), tuple(fields), key_field=key_field,
                                        shards=self._shards(distributed)))

    def distribute_index(self, name: str, shards: int | None = None) -> Index:
        """Shard an existing index across the Citus workers (rows move into the shards)."""
        return Index(self, distribute_index(self.db, name, self.settings.shards if shards is None else shards))

    def remove_unfinished_uploads(self) -> dict[str, list[str]]:
        """For every photo index with uploads: remove the files of uploads whose row never committed (see
        photos.remove_unfinished_uploads). The server runs it at start, after a kill."""
        removed = {}
        for spec in self.list_indexes():
            if spec.kind == "photos" and (self.settings.home / "uploads" / spec.name).is_dir():
                removed[spec.name] = photos.remove_unfinished_uploads(Index(self, spec))
                self.uploads_checked.add(spec.name)
        return removed

    def list_indexes(self) -> list[IndexSpec]:
        return list_indexes(self.db)

    def delete_index(self, name: str) -> None:
        delete_index(self.db, name)

    def rename_index(self, name: str, new_name: str) -> Index:
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

    def database_status(self) -> PoolStatus | None:
        """The connection pool's use and the outage state (None before the database was first opened: reading it
        never opens it, so monitoring cannot start a server or wait for one)."""
        db = self._db
        return db.status() if db is not None else None

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

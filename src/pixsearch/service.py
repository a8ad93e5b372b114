"""The one façade every front door (CLI, Python, REST, web) goes through: Engine opens indexes, Index does the work."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pixsearch.config import Settings
from pixsearch.db import Database, open_database
from pixsearch.ingest import IngestProgress, IngestReport, ingest_paths
from pixsearch.ingest.decode import read_and_decode
from pixsearch.models import load_embedder
from pixsearch.models.base import Embedder
from pixsearch.store import (
    Hit,
    IndexNotFoundError,
    IndexSpec,
    PhotoTable,
    VectorField,
    create_index,
    delete_index,
    get_index,
    list_indexes,
    migrate,
)

log = logging.getLogger(__name__)

MAX_K = 1000
IMAGE_QUERY_PREFIX = "image:"


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

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = open_database(self.settings)
            migrate(self._db)
        return self._db

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.settings.model, cache_dir=self.settings.cache_dir)
        return self._embedder

    def index(self, name: str | None = None, *, create: bool = False) -> "Index":
        """Open the index `name` (default from settings); with create=True make it for the loaded model if absent."""
        name = name or self.settings.index
        try:
            spec = get_index(self.db, name)
        except IndexNotFoundError:
            if not create:
                raise IndexNotFoundError(
                    f"no index named {name!r}: index some photos first (pixsearch index PATH --index {name})"
                ) from None
            fields = [
                VectorField(name=s.name, dims=s.dims, model_id=s.model_id, metric=s.metric)
                for s in self.embedder.spaces.values()
            ]
            spec = create_index(self.db, name, fields)
        return Index(self, spec)

    def list_indexes(self) -> list[IndexSpec]:
        return list_indexes(self.db)

    def delete_index(self, name: str) -> None:
        delete_index(self.db, name)

    def close(self) -> None:
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
        self.table = PhotoTable(spec)

    @property
    def name(self) -> str:
        return self.spec.name

    def _checked_embedder(self) -> Embedder:
        embedder = self.engine.embedder
        for vf in self.spec.vector_fields:
            space = embedder.spaces.get(vf.name)
            if space is None or space.model_id != vf.model_id or space.dims != vf.dims:
                found = f"{space.model_id} ({space.dims}-d)" if space else "nothing"
                raise ModelMismatchError(
                    f"index {self.name!r} holds {vf.name!r} vectors from model {vf.model_id} ({vf.dims}-d), but the "
                    f"loaded model {embedder.model_id!r} produces {found} for that field. Search it with the model it "
                    "was built with, or index into a new index (--index NAME)."
                )
        return embedder

    # -- ingest ----------------------------------------------------------------------------------------------------
    def add_paths(
        self, paths: Sequence[str | Path], *, prune: bool = True, progress: IngestProgress | None = None
    ) -> IngestReport:
        return ingest_paths(
            self.engine.db,
            self.table,
            self._checked_embedder(),
            [Path(p) for p in paths],
            batch_size=self.engine.settings.batch_size,
            decode_workers=self.engine.settings.decode_workers,
            prune=prune,
            progress=progress,
        )

    def count(self) -> int:
        with self.engine.db.connection() as conn:
            return self.table.count(conn)

    # -- search ----------------------------------------------------------------------------------------------------
    def query_vector(self, query: Query) -> tuple[str, np.ndarray]:
        """Embed a query into the vector field it searches: text -> text space, image -> image space."""
        embedder = self._checked_embedder()
        if query.image is not None:
            image = query.image if isinstance(query.image, Image.Image) else read_and_decode(str(query.image)).image
            return embedder.image_space, embedder.embed_images([image]).vectors[embedder.image_space][0]
        text = (query.text or "").strip()
        if not text:
            raise ValueError("empty query: give search text or --image FILE")
        return embedder.text_space, embedder.embed_texts([text])[0]

    def search(self, query: Query | str, k: int = 10) -> list[Hit]:
        if isinstance(query, str):
            query = Query(text=query)
        field_name, vector = self.query_vector(query)
        return self.search_vector(field_name, vector, k)

    def search_vector(self, field_name: str, vector: np.ndarray, k: int = 10) -> list[Hit]:
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        with self.engine.db.connection() as conn:
            return self.table.search(conn, field_name, vector, k)

    def explain(self, query: Query | str, k: int = 10) -> str:
        if isinstance(query, str):
            query = Query(text=query)
        field_name, vector = self.query_vector(query)
        with self.engine.db.connection() as conn:
            return self.table.explain(conn, field_name, vector, k)

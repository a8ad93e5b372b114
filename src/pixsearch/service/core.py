"""The index core: what every feature of an index builds on — its definition (spec), its rows (an IndexStore),
the model bound to its vector fields, and the one place that changes its definition or settings.

Feature modules (builds, captions, duplicates, photos, regions, reindex, documents, library) take an IndexCore and
import nothing above this module; the Index facade (index.py) sits on top of them all. The core never sees the
Engine class: it needs only what `Runtime` describes, which Engine provides.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
from PIL import Image

from pixsearch.config import Settings
from pixsearch.db import Database
from pixsearch.models.base import Embedder
from pixsearch.search.context import IndexModel, QueryVectorCache
from pixsearch.service.thumbnails import ThumbnailCache
from pixsearch.store import IndexSpec, change_definition, update_settings
from pixsearch.store.registry import add_to_settings
from pixsearch.store.index_store import IndexStore


class ModelMismatchError(ValueError):
    """The index was built by a different model than the one loaded; mixing vector spaces gives nonsense."""


class Runtime(Protocol):
    """What an index needs of the process it runs in (service.engine.Engine)."""

    settings: Settings
    query_vectors: QueryVectorCache
    thumbnails: ThumbnailCache
    uploads_checked: set[str]  # photo indexes whose uploads folder was checked since the process started
    upgraded: set[tuple[str, str | None]]  # (index, model) brought up to this release's fields (service/captions)

    @property
    def db(self) -> Database: ...

    def model(self, name: str | None = None) -> Embedder: ...

    def open_image(self, value: str | Path | bytes) -> Image.Image: ...


class IndexCore:
    """One named index's definition, rows and model. `redefine`, `update_settings` and `add_to_settings` are the
    only ways its definition changes; each refreshes the spec and the store together."""

    def __init__(self, engine: Runtime, spec: IndexSpec):
        self.engine = engine
        self._set(spec)

    def _set(self, spec: IndexSpec) -> None:
        self.spec = spec
        self.store = IndexStore(self.engine.db, spec)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def db(self) -> Database:
        return self.engine.db

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    # -- the definition ----------------------------------------------------------------------------------------------
    def update_settings(self, changes: Mapping[str, Any]) -> IndexSpec:
        """Merge `changes` into the index's stored settings (None removes a key) and use the result."""
        self._set(update_settings(self.db, self.name, dict(changes)))
        return self.spec

    def add_to_settings(self, key: str, counts: Mapping[str, int]) -> IndexSpec:
        """Add `counts` to the numbers kept under settings[key] (store.add_to_settings) and use the result."""
        self._set(add_to_settings(self.db, self.name, key, dict(counts)))
        return self.spec

    def redefine(self, **change: Any) -> IndexSpec:
        """Change the fields, vector fields or model of the index (store.change_definition) and use the result."""
        self._set(change_definition(self.db, self.name, **change))
        return self.spec

    # -- the model -----------------------------------------------------------------------------------------------
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

    # -- rows ----------------------------------------------------------------------------------------------------
    def write_rows(self, rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] | None = None,
                   insert_missing: bool = True) -> set[str]:
        """Write rows in one transaction (whole documents, or `columns` of them); the keys written."""
        return self.store.write([dict(row) for row in rows], columns=columns, insert_missing=insert_missing)

    def get(self, ids: Sequence[str], *, vectors: bool = True) -> dict[str, dict[str, Any]]:
        """Stored documents by id (missing ids are absent from the result); vectors as float32 arrays."""
        columns = self.store.retrievable + ([vf.name for vf in self.spec.vector_fields] if vectors else [])
        found = self.store.select([str(i) for i in ids], columns)
        if vectors:
            for doc in found.values():
                for vf in self.spec.vector_fields:
                    value = doc.get(vf.name)
                    if value is not None:
                        doc[vf.name] = np.asarray(value.to_numpy(), dtype=np.float32)
        return found

    def remove(self, ids: Sequence[str]) -> int:
        return self.store.delete([str(i) for i in ids])

    def count(self) -> int:
        return self.store.count()

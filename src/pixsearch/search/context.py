"""What a search needs from the index it runs on — and nothing more: search/ never sees the service's Index."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from pixsearch.limits import QUERY_VECTOR_CACHE_BYTES, QUERY_VECTOR_CACHE_ITEMS
from pixsearch.models.base import Embedder
from pixsearch.store import IndexSpec, IndexStore


class FileTermRefused(ValueError):
    """A query named a file on the server (image:PATH) where only the CLI and the Python API may. One fixed message,
    whatever the path: the answer must not tell a client whether a path exists, is a folder or a device."""

    MESSAGE = (
        "image:PATH query terms name files on the server and are accepted only by the CLI and the Python API. "
        "Send the image itself: a multipart POST to /indexes/NAME/images/search, or a vector query of kind 'image' "
        "or 'imageBinary' with base64 image bytes."
    )

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


@dataclass(frozen=True)
class IndexModel:
    """An index's model bound to the index's columns: which vector field a text query and an image query land in,
    and the column each of the model's vector spaces fills (usually the space's own name)."""

    embedder: Embedder
    columns: dict[str, str]  # the model's space name -> the index's vector field

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def text_field(self) -> str | None:
        space = self.embedder.text_space
        return self.columns[space] if space is not None else None

    @property
    def image_field(self) -> str:
        return self.columns[self.embedder.image_space]

    def embed_text(self, text: str) -> np.ndarray:
        return self.embedder.embed_texts([text])[0]

    def embed_image(self, image: Image.Image) -> dict[str, np.ndarray]:
        """field -> vector of one upright RGB image."""
        embedded = self.embedder.embed_images([self.embedder.prepare_image(image)])
        return {self.columns[space]: v[0] for space, v in embedded.vectors.items() if space in self.columns}


@dataclass
class SearchContext:
    """One index as search sees it.

    store:        the index's rows (search reads them through one snapshot per request) and its definition.
    model:        loads the model the index was built with (checked against its vector fields) bound to its
                  columns; None when the index holds precomputed vectors only.
    query_vectors: recent query embeddings, shared by the server.
    open_image:   reads an image file or bytes into an upright RGB image, within the configured limits.
    allow_file_terms: whether `image:PATH` terms may open server files (CLI, Python: yes; REST API, page: no).
    """

    store: IndexStore
    model: Callable[[], IndexModel] | None
    query_vectors: "QueryVectorCache"
    open_image: Callable[[str | Path | bytes], Image.Image]
    allow_file_terms: bool = True

    @property
    def spec(self) -> IndexSpec:
        """The index as the store was opened with it (what a request is planned against)."""
        return self.store.spec


class QueryVectorCache:
    """Recently embedded query texts and uploaded images, so paging through a query (every page is a new request)
    and asking it again skip the model. Keys carry the model id; the vectors are read-only. Bounded both in entries
    and in bytes (an image query stores every vector field of its model)."""

    def __init__(self, size: int = QUERY_VECTOR_CACHE_ITEMS, max_bytes: int = QUERY_VECTOR_CACHE_BYTES):
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def entries(self) -> int:
        return len(self._items)

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
        value = compute()  # outside the lock: two threads may embed the same query once each, never wrongly
        arrays = list(value.values()) if isinstance(value, dict) else [value]
        for array in arrays:
            array.setflags(write=False)
        cost = sum(np.asarray(a).nbytes for a in arrays) + sum(len(repr(part)) for part in key)
        with self._lock:
            self.misses += 1
            if key in self._items:
                self.bytes -= self._items.pop(key)[1]
            self._items[key] = (value, cost)
            self.bytes += cost
            while self._items and (len(self._items) > self.size or self.bytes > self.max_bytes):
                self.bytes -= self._items.popitem(last=False)[1][1]
        return value

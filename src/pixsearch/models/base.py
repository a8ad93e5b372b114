"""The one contract every embedder honours, so store, ingest and search never care which model is loaded.

An embedder declares what it produces: its vector fields (`spaces`), which of them a text query and an image query
land in, the extra per-photo fields it fills (e.g. the offline model's ImageNet classes and tags), and what its
similarity scores mean (`relevance`). Ingest writes what it declares; search reads the declaration, never the class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from pixsearch.store.schema import Field


@dataclass(frozen=True)
class VectorSpace:
    """A vector field an embedder fills: its name in the index, its width, the metric it was trained for,
    and the id of the model that produced it (querying with another model is refused)."""

    name: str
    dims: int
    metric: str
    model_id: str


@dataclass(frozen=True)
class ClassScore:
    class_id: int
    label: str
    probability: float


@dataclass(frozen=True)
class Relevance:
    """What a text-to-image similarity in the text space means, so clearly irrelevant hits can be hidden (the page
    and the API do by default, with a way to show all).

    A hit is relevant when (s - b) / (1 - b) >= threshold, where s is its similarity to the query and b the query's
    similarity to `baseline` — a vector standing for "any photo" (None: b = 0). Text embedders often place every
    text close to every image (MiniLM's space is anisotropic); measuring a hit against what any photo would score
    for this query separates "about this" from "about anything" far better than one fixed similarity.
    `how` says how the threshold was calibrated."""

    threshold: float
    how: str
    baseline: np.ndarray | None = field(default=None, compare=False, repr=False)

    def adjusted(self, similarity: float, query: np.ndarray) -> float:
        if self.baseline is None:
            return similarity
        b = float(np.dot(query, self.baseline))
        return (similarity - b) / max(1e-6, 1.0 - b)


@dataclass
class ImageEmbeddings:
    """Embeddings of a batch of n images.

    vectors: field name -> float32 array (n, dims), each row L2-normalised.
    fields:  per image, values of the embedder's extra photo fields (empty dicts for embedders without any).
    classes: per image, the top predicted classes (embedders with a classifier only).
    """

    vectors: dict[str, np.ndarray]
    fields: list[dict[str, Any]] = field(default_factory=list)
    classes: list[list[ClassScore]] = field(default_factory=list)


class ModelNotAvailableError(RuntimeError):
    """Raised when a model's weights or code are not installed locally; the message says how to get them."""


@runtime_checkable
class Embedder(Protocol):
    """Embeds images and texts into declared vector fields.

    name:        what loads this model again (`offline`, `clip:PATH_OR_ID`, `open_clip:ARCH[:CHECKPOINT]`); an index
                 records it so later runs and servers load the model the index needs.
    model_id:    identity of the weights and preprocessing; each vector field stores it.
    spaces:      every vector field filled for an image.
    text_space:  the field a text query lands in (None: the model has no text tower).
    image_space: the field for image-to-image ("more like this") search.
    photo_fields: extra per-photo fields ingest stores from ImageEmbeddings.fields.
    relevance:   calibrated text-query threshold, or None when the model has none.
    caption_threshold (optional attribute): the text-to-text similarity from which a photo's caption matches a
                 query (search/request.py has a fallback relative to an empty caption for models without one).
    """

    name: str
    model_id: str
    spaces: dict[str, VectorSpace]
    text_space: str | None
    image_space: str
    photo_fields: tuple[Field, ...]
    relevance: Relevance | None

    def prepare_image(self, image: Image.Image) -> Any:
        """Turn an upright RGB image into this model's input (resized, cropped views...). Pure pixel work:
        ingest calls it in its decode threads so it overlaps inference. embed_images accepts its results."""
        ...

    def embed_images(self, images: Sequence[Any]) -> ImageEmbeddings:
        """Embed a batch of PIL images and/or prepare_image() results."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, dims) unit rows in `text_space`."""
        ...


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise each row (float32); all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

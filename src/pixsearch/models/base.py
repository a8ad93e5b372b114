"""The one contract every embedder honours, so store, ingest and search never care which model is loaded.

An embedder declares what it produces: its vector fields (`spaces`), which of them a text query and an image query
land in, the extra per-photo fields it fills (e.g. the offline model's ImageNet classes and tags), and what its
similarity scores mean (`relevance`). Ingest writes what it declares; search reads the declaration, never the class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

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


@dataclass(frozen=True)
class ModelCapabilities:
    """What a model declares, known without loading its weights: read from constants (the offline model) or from a
    checkpoint's configuration files (clip:, open_clip:). Every embedder is built from its capabilities and exposes
    them (DeclaredModel), so the declaration and the loaded model cannot disagree.

    name, model_id, spaces, text_space, image_space, photo_fields: as in Embedder.
    relevance:  the calibrated text-query threshold and how it was found, or None. A model that measures hits
                against a baseline vector it computes (the offline model) attaches that vector once loaded; the
                baseline does not take part in comparisons.
    caption_threshold, duplicate_threshold: the model's calibration for caption matches and edited copies (None:
                the callers' model-independent fallbacks).
    files:      the weights and configuration files the model loads from on this machine (what `models list`
                locates and sizes).
    """

    name: str
    model_id: str
    spaces: Mapping[str, VectorSpace]
    text_space: str | None
    image_space: str
    photo_fields: tuple[Field, ...] = ()
    relevance: Relevance | None = None
    caption_threshold: float | None = None
    duplicate_threshold: float | None = None
    files: tuple[Path, ...] = ()

    @classmethod
    def joint_space(cls, *, name: str, family: str, dims: int, model_id: str, relevance: Relevance | None = None,
                    files: Sequence[Path] = ()) -> ModelCapabilities:
        """A CLIP-class model: one cosine vector field named after its family ("clip", "siglip") that both text and
        image queries land in, and no photo fields."""
        return cls(name=name, model_id=model_id, spaces={family: VectorSpace(family, dims, "cosine", model_id)},
                   text_space=family, image_space=family, relevance=relevance, files=tuple(files))

    @property
    def dims(self) -> dict[str, int]:
        """Vector field name -> width."""
        return {space.name: space.dims for space in self.spaces.values()}


class DeclaredModel:
    """The Embedder attributes every embedder reads off its `capabilities` instead of stating them again."""

    capabilities: ModelCapabilities

    @property
    def name(self) -> str:
        return self.capabilities.name

    @property
    def model_id(self) -> str:
        return self.capabilities.model_id

    @property
    def spaces(self) -> Mapping[str, VectorSpace]:
        return self.capabilities.spaces

    @property
    def text_space(self) -> str | None:
        return self.capabilities.text_space

    @property
    def image_space(self) -> str:
        return self.capabilities.image_space

    @property
    def photo_fields(self) -> tuple[Field, ...]:
        return self.capabilities.photo_fields

    @property
    def relevance(self) -> Relevance | None:
        return self.capabilities.relevance

    @property
    def caption_threshold(self) -> float | None:
        return self.capabilities.caption_threshold

    @property
    def duplicate_threshold(self) -> float | None:
        return self.capabilities.duplicate_threshold


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

    capabilities: everything below that is known without loading weights (ModelCapabilities); the attributes
                 are read off it.
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

    capabilities: ModelCapabilities
    name: str
    model_id: str
    spaces: Mapping[str, VectorSpace]
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

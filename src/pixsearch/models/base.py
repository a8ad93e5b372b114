"""The one contract every embedder honours, so store, ingest and search never care which model is loaded."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image


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


@dataclass
class ImageEmbeddings:
    """Embeddings of a batch of n images.

    vectors: field name -> float32 array (n, dims), each row L2-normalised.
    classes: per image, the top predicted classes (empty lists for embedders without a classifier); they are stored
    so a text-space vector can be rebuilt without rerunning the image model.
    """

    vectors: dict[str, np.ndarray]
    classes: list[list[ClassScore]] = field(default_factory=list)


class ModelNotAvailableError(RuntimeError):
    """Raised when a model's weights or code are not installed locally; the message says how to get them."""


@runtime_checkable
class Embedder(Protocol):
    """Embeds images and texts.

    `spaces` lists every vector field the embedder fills for an image. `text_space` names the field a text query
    lands in; `image_space` the field for image-to-image ("more like this") search.
    """

    model_id: str
    spaces: dict[str, VectorSpace]
    text_space: str
    image_space: str

    def embed_images(self, images: Sequence[Image.Image]) -> ImageEmbeddings:
        """Embed a batch. Embedders that also define `prepare_image(image) -> prepared` accept its results here
        in place of images: ingest calls prepare_image in its decode threads (see ingest/pipeline.py)."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

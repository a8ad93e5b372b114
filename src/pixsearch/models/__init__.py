"""Embedding models. `load_embedder` is the entry point; importing this package does not import torch."""
from __future__ import annotations

from pathlib import Path

from .base import ClassScore, Embedder, ImageEmbeddings, ModelNotAvailableError, VectorSpace

KNOWN_EMBEDDERS = ("offline",)

__all__ = [
    "KNOWN_EMBEDDERS",
    "ClassScore",
    "Embedder",
    "ImageEmbeddings",
    "ModelNotAvailableError",
    "VectorSpace",
    "default_cache_dir",
    "load_embedder",
]


def default_cache_dir() -> Path:
    """Per-user cache folder for derived model data (class text embeddings, ONNX exports)."""
    from platformdirs import user_cache_dir  # noqa: PLC0415

    return Path(user_cache_dir("pixsearch")) / "models"


def load_embedder(
    name: str = "offline", cache_dir: Path | str | None = None, *, backend: str = "auto", threads: int | None = None
) -> Embedder:
    """Build the named embedder. Models load lazily on first use, so this is cheap.

    cache_dir holds derived data (class text embeddings, ONNX exports); None means default_cache_dir().
    backend: "auto" (onnxruntime when installed, else torch), "onnx" or "torch"; threads: onnxruntime intra-op
    threads (None: one per physical core).
    """
    if name == "offline":
        from .offline import OfflineEmbedder  # noqa: PLC0415

        directory = cache_dir if cache_dir is not None else default_cache_dir()
        return OfflineEmbedder(directory, backend=backend, threads=threads)
    raise ValueError(f"unknown embedder {name!r}; known: {', '.join(KNOWN_EMBEDDERS)}")

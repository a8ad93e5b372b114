"""Embedding models, chosen by name from a registry. Importing this package imports neither torch nor a model.

Names: `offline` (the zero-download default), `clip:PATH_OR_REPO_ID` (a Hugging Face transformers CLIP or SigLIP
checkpoint: a local folder or the local Hugging Face cache) and `open_clip:ARCH[:CHECKPOINT_FILE_OR_TAG]`
(open-clip-torch). The part before the first ':' picks the factory; the factory parses the rest.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from .base import ClassScore, Embedder, ImageEmbeddings, ModelNotAvailableError, Relevance, VectorSpace

# prefix -> "module:function"; the function takes (argument after the prefix or "", cache_dir, backend, threads).
# Modules are imported only when a model of theirs is loaded.
FACTORIES: dict[str, str] = {
    "offline": "pixsearch.models.offline:load",
    "clip": "pixsearch.models.clip:load",
    "open_clip": "pixsearch.models.openclip:load",
}
KNOWN_EMBEDDERS = tuple(FACTORIES)

__all__ = [
    "FACTORIES",
    "KNOWN_EMBEDDERS",
    "ClassScore",
    "Embedder",
    "ImageEmbeddings",
    "ModelNotAvailableError",
    "Relevance",
    "VectorSpace",
    "default_cache_dir",
    "load_embedder",
    "parse_model_name",
]


def default_cache_dir() -> Path:
    """Per-user cache folder for derived model data (class text embeddings, ONNX exports)."""
    from platformdirs import user_cache_dir  # noqa: PLC0415

    return Path(user_cache_dir("pixsearch")) / "models"


def parse_model_name(name: str) -> tuple[str, str]:
    """`clip:openai/clip-vit-base-patch32` -> ("clip", "openai/clip-vit-base-patch32"); refuses unknown prefixes."""
    prefix, _, argument = (name or "").strip().partition(":")
    if prefix not in FACTORIES:
        raise ValueError(
            f"unknown model {name!r}; use offline, clip:PATH_OR_REPO_ID (transformers CLIP/SigLIP) or "
            "open_clip:ARCH[:CHECKPOINT] (open-clip-torch)"
        )
    if prefix != "offline" and not argument:
        raise ValueError(f"model {name!r} needs a checkpoint after '{prefix}:'")
    if prefix == "offline" and argument:
        raise ValueError(f"the offline model takes no argument: use 'offline', not {name!r}")
    return prefix, argument


def _factory(prefix: str) -> Callable[..., Embedder]:
    module, _, function = FACTORIES[prefix].partition(":")
    return getattr(importlib.import_module(module), function)


def load_embedder(
    name: str = "offline", cache_dir: Path | str | None = None, *, backend: str = "auto", threads: int | None = None
) -> Embedder:
    """Build the named embedder. Weights load lazily on first use, so this is cheap.

    cache_dir holds derived data (class text embeddings, ONNX exports); None means default_cache_dir().
    backend: "auto" (onnxruntime when installed, else torch), "onnx" or "torch"; threads: onnxruntime intra-op
    threads (None: one per core available to this process).
    """
    prefix, argument = parse_model_name(name)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _factory(prefix)(argument, directory, backend=backend, threads=threads)

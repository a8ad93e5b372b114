"""Embedding models, chosen by name from a registry. Importing this package imports neither torch nor a model.

Names: `offline` (the zero-download default), `clip:PATH_OR_REPO_ID` (a Hugging Face transformers CLIP or SigLIP
checkpoint: a local folder or the local Hugging Face cache) and `open_clip:ARCH[:CHECKPOINT_FILE_OR_TAG]`
(open-clip-torch). The part before the first ':' picks the module (PREFIXES); the module parses the rest.

What a model declares (its vector fields, text space, photo fields, calibration: ModelCapabilities) is known
without loading it: `model_capabilities(name)` reads it from constants (offline) or from the checkpoint's
configuration files (clip:, open_clip:), importing neither torch nor onnxruntime. `load_embedder(name)` builds the
embedder from the same declaration.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from .base import (
    ClassScore,
    Embedder,
    ImageEmbeddings,
    ModelCapabilities,
    ModelNotAvailableError,
    Relevance,
    VectorSpace,
)

# name prefix -> the module of its models. Each has `capabilities(argument, cache_dir) -> ModelCapabilities` (what the
# model declares, without loading weights) and `load(argument, cache_dir, *, backend, threads) -> Embedder` (the
# embedder, built from those capabilities); argument is the name after the prefix, or "". Modules are imported only
# when a model of theirs is asked for.
PREFIXES: dict[str, str] = {
    "offline": "pixsearch.models.offline",
    "clip": "pixsearch.models.clip",
    "open_clip": "pixsearch.models.openclip",
}
KNOWN_EMBEDDERS = tuple(PREFIXES)

__all__ = [
    "PREFIXES",
    "KNOWN_EMBEDDERS",
    "ClassScore",
    "Embedder",
    "ImageEmbeddings",
    "ModelCapabilities",
    "ModelNotAvailableError",
    "Relevance",
    "VectorSpace",
    "default_cache_dir",
    "load_embedder",
    "model_capabilities",
    "parse_model_name",
]


def default_cache_dir() -> Path:
    """Per-user cache folder for derived model data (class text embeddings, ONNX exports)."""
    from platformdirs import user_cache_dir  # noqa: PLC0415

    return Path(user_cache_dir("pixsearch")) / "models"


def parse_model_name(name: str) -> tuple[str, str]:
    """`clip:openai/clip-vit-base-patch32` -> ("clip", "openai/clip-vit-base-patch32"); refuses unknown prefixes."""
    prefix, _, argument = (name or "").strip().partition(":")
    if prefix not in PREFIXES:
        raise ValueError(
            f"unknown model {name!r}; use offline, clip:PATH_OR_REPO_ID (transformers CLIP/SigLIP) or "
            "open_clip:ARCH[:CHECKPOINT] (open-clip-torch)"
        )
    if prefix != "offline" and not argument:
        raise ValueError(f"model {name!r} needs a checkpoint after '{prefix}:'")
    if prefix == "offline" and argument:
        raise ValueError(f"the offline model takes no argument: use 'offline', not {name!r}")
    return prefix, argument


def _module_of(prefix: str) -> ModuleType:
    return importlib.import_module(PREFIXES[prefix])


def _cache_dir(cache_dir: Path | str | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def model_capabilities(name: str = "offline", cache_dir: Path | str | None = None) -> ModelCapabilities:
    """What the named model declares, without loading its weights (see ModelCapabilities); ModelNotAvailableError
    when its files are not on this machine. cache_dir as for load_embedder (weights' content digests are cached
    there)."""
    prefix, argument = parse_model_name(name)
    return _module_of(prefix).capabilities(argument, _cache_dir(cache_dir))


def load_embedder(
    name: str = "offline", cache_dir: Path | str | None = None, *, backend: str = "auto", threads: int | None = None
) -> Embedder:
    """Build the named embedder. Weights load lazily on first use, so this is cheap.

    cache_dir holds derived data (class text embeddings, ONNX exports); None means default_cache_dir().
    backend: "auto" (onnxruntime when installed, else torch), "onnx" or "torch"; threads: onnxruntime intra-op
    threads (None: one per core available to this process).
    """
    prefix, argument = parse_model_name(name)
    return _module_of(prefix).load(argument, _cache_dir(cache_dir), backend=backend, threads=threads)

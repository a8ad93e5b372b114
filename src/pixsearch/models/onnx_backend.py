"""onnxruntime inference for the local models: backend choice, one-time cached ONNX export, sessions.

The offline model's graphs are written with numpy + onnx (efficientnet_onnx.py, minilm_onnx.py); CLIP-class
checkpoints are exported from torch (the `clip` extra). Exported files live in <cache_dir>/onnx/,
named by a hash of the source weights files (name, size, mtime) and the export settings, so a reinstalled model or
a changed exporter gets a new file; they are written atomically (temp file + os.replace), so concurrent processes
never see a partial file. Importing this module imports neither torch nor onnxruntime.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .base import ModelNotAvailableError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
ONNX_OPSET = 17
# Bump when the export code changes in a way that changes the exported graphs: it is part of the cache file hash.
ONNX_EXPORT_VERSION = 1

_export_lock = threading.Lock()


class ExportError(RuntimeError):
    """The ONNX export failed or the exported graph does not reproduce the torch model."""


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def installed(*modules: str) -> bool:
    """Whether every module can be imported (found without importing it)."""
    return all(importlib.util.find_spec(m) is not None for m in modules)


def require(feature: str, modules: Sequence[str], how: str) -> None:
    """ModelNotAvailableError naming the feature and how to install what it needs, unless every module is there."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        raise ModelNotAvailableError(f"{feature} needs {', '.join(absent)}, which is not installed: {how}")


# The extra that brings torch for the models that are exported from it (clip:, open_clip:).
CLIP_EXTRA = "pip install 'pixsearch[clip]'"


def resolve_backend(backend: str) -> str:
    """"auto" -> "onnx" when onnxruntime is importable, else "torch". "onnx" without onnxruntime is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "onnx" if onnxruntime_available() else "torch"
    if backend == "onnx" and not onnxruntime_available():
        raise ModelNotAvailableError("the onnx backend needs onnxruntime: pip install onnxruntime")
    return backend


def cache_file(cache_dir: Path | str, stem: str, sources: Sequence[Path], settings: Mapping[str, Any]) -> Path:
    """<cache_dir>/onnx/<stem>-<hash>.onnx; the hash covers the sources' name, size and mtime and the settings."""
    described = []
    for source in sources:
        st = Path(source).stat()
        described.append([Path(source).name, st.st_size, st.st_mtime_ns])
    key = {"sources": described, "settings": dict(settings), "opset": ONNX_OPSET, "version": ONNX_EXPORT_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "onnx" / f"{stem}-{digest}.onnx"


def ensure_exported(path: Path, export: Callable[[Path], None]) -> Path:
    """Return path, first running export(tmp) if it is not cached; export must write a complete, verified model."""
    if path.is_file():
        return path
    with _export_lock:
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            export(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            tmp.chmod(0o644)  # mkstemp makes it private; the models are public data
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def create_session(path: Path, threads: int | None = None):
    """A CPU InferenceSession: full graph optimisation, sequential, `threads` intra-op threads (None: ORT default,
    one per physical core). Idle worker threads do not spin, so they leave the CPU to decode threads."""
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = max(0, int(threads or 0))
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def open_session(path: Path, export: Callable[[Path], None], threads: int | None = None):
    """Session on the cached model, exporting it first if needed; an unreadable cached file is re-exported once."""
    if path.is_file():
        try:
            return create_session(path, threads)
        except Exception as exc:  # noqa: BLE001 - a damaged cache file must not be fatal
            log.warning("cached ONNX model %s is unreadable (%s); exporting it again", path, exc)
            path.unlink(missing_ok=True)
    ensure_exported(path, export)
    return create_session(path, threads)


def export_torch_module(
    module: Any,
    args: tuple,
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> None:
    """torch.onnx.export of an eval-mode module to a single file, then onnx.checker.

    The TorchScript exporter is tried first: for these static graphs it is ~10x faster than the torch.export-based
    one and needs no onnxscript. The torch.export-based exporter is the fallback (e.g. once the TorchScript one is
    removed from torch). dynamic_axes names the dynamic axes of inputs and outputs; the forward() parameters must be
    named like input_names. Callers verify the result numerically against torch.
    """
    import torch  # noqa: PLC0415

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer chatter
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:  # noqa: BLE001 - try the other exporter
            first = f"TorchScript exporter: {type(exc).__name__}: {exc}"
            try:
                _export_with_torch_export(module, args, path, input_names, output_names, dynamic_axes)
            except Exception as exc2:  # noqa: BLE001
                raise ExportError(f"{first}; torch.export exporter: {type(exc2).__name__}: {exc2}") from exc2
    try:
        import onnx  # noqa: PLC0415
    except ImportError:
        return
    onnx.checker.check_model(str(path))


def _export_with_torch_export(
    module: Any,
    args: tuple,
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> None:
    """The torch.export-based exporter, with export_torch_module's dynamic_axes turned into its dynamic_shapes."""
    import torch  # noqa: PLC0415

    labels = {label for name in input_names for label in dynamic_axes.get(name, {}).values()}
    dims = {label: torch.export.Dim(label) for label in labels}
    shapes = {
        name: {axis: dims[label] for axis, label in dynamic_axes.get(name, {}).items()} or None
        for name in input_names
    }
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_shapes=shapes,
        opset_version=max(ONNX_OPSET, 18),
        dynamo=True,
        external_data=False,
        verbose=False,
    )

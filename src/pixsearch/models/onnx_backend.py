"""onnxruntime inference for the local models: backend choice, one-time cached ONNX export, sessions.

The offline model's graphs are written with numpy + onnx (efficientnet_onnx.py, minilm_onnx.py); CLIP-class
checkpoints are exported from torch (the `clip` extra). Exported files live in <cache_dir>/onnx/,
named by a hash of the source weights files (name, size, mtime) and the export settings, so a reinstalled model or
a changed exporter gets a new file; they are written atomically (temp file + os.replace), so concurrent processes
never see a partial file. Sessions run on the CPU provider, or on an accelerator (device.py decides which) with an
fp16 copy of the model when its outputs agree with fp32 (accelerated_session). Importing this module imports neither
torch nor onnxruntime.
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .base import ModelNotAvailableError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
ONNX_OPSET = 17
# Bump when the export code changes in a way that changes the exported graphs: it is part of the cache file hash.
ONNX_EXPORT_VERSION = 1

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# onnxruntime CUDA provider options (why each):
CUDA_PROVIDER_OPTIONS = {
    # the process's first visible GPU: CUDA_VISIBLE_DEVICES (set by Ray for its GPU actors) chooses which one that is
    "device_id": 0,
    # grow the memory arena by what is asked, not by doubling: less memory held beyond the model's needs
    "arena_extend_strategy": "kSameAsRequested",
    # EXHAUSTIVE (the default) benchmarks every convolution for each new input shape, i.e. again for each new size
    # of a run's last, partial batch; the heuristic choice costs nothing at run time
    "cudnn_conv_algo_search": "HEURISTIC",
    "do_copy_in_default_stream": 1,
}

# An fp16 copy is used on an accelerator only when each output row's cosine to fp32 is at least this on a check batch.
FP16_MIN_COSINE = 0.999

_export_lock = threading.Lock()
_logger_lock = threading.Lock()


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


def cuda_providers(device_id: int = 0) -> list:
    """onnxruntime providers for a CUDA session: CUDA with CUDA_PROVIDER_OPTIONS, then the CPU for the nodes CUDA
    has no kernel for (onnxruntime places those on the CPU; that is normal, not a failure)."""
    return [(CUDA_PROVIDER, {**CUDA_PROVIDER_OPTIONS, "device_id": device_id}), CPU_PROVIDER]


def session_options(threads: int | None = None):
    """Full graph optimisation, sequential, `threads` intra-op threads (None: ORT default, one per physical core);
    idle worker threads do not spin, so they leave the CPU to decode threads. The same for CUDA sessions, where
    these threads run only the nodes placed on the CPU."""
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = max(0, int(threads or 0))
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def create_session(path: Path | bytes, threads: int | None = None, providers: Sequence[Any] | None = None):
    """An InferenceSession on `path` (or model bytes) with session_options(threads), on the CPU provider unless
    `providers` says otherwise (device.cuda_providers()).

    With an accelerator first in `providers`, the session must really run on it: onnxruntime would otherwise fall
    back to the CPU quietly (a provider its build lacks) or print its fallback on stdout (one that fails to
    initialise); here both are a RuntimeError, which device.Device turns into one warning or one error. Its own
    warnings about the provider are kept off stderr (the caller says what matters, once)."""
    import onnxruntime as ort  # noqa: PLC0415

    providers = list(providers or [CPU_PROVIDER])
    first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    source = path if isinstance(path, bytes) else str(path)
    if first == CPU_PROVIDER:
        return ort.InferenceSession(source, sess_options=session_options(threads), providers=providers)
    with _quiet_onnxruntime():
        session = ort.InferenceSession(source, sess_options=session_options(threads), providers=providers,
                                       enable_fallback=0)
    active = session.get_providers()
    if not active or active[0] != first:
        raise RuntimeError(f"{first} did not initialise (the session runs on {', '.join(active) or 'nothing'})")
    session.disable_fallback()  # a failing run raises instead of switching providers behind our back
    return session


@contextmanager
def _quiet_onnxruntime():
    """While a session on an accelerator is made: onnxruntime's Python warnings ignored and its native logger at
    FATAL (missing CUDA libraries are logged there as errors), then back at ERROR, the level pixsearch keeps."""
    import onnxruntime as ort  # noqa: PLC0415

    with _logger_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort.set_default_logger_severity(4)
        try:
            yield
        finally:
            ort.set_default_logger_severity(3)


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


def device_session(path: Path, export: Callable[[Path], None], threads: int | None, *, device: Any, cuda: bool,
                   feeds: Callable[[], Mapping[str, np.ndarray]], what: str) -> tuple[Any, str]:
    """(session, what it runs on) for a tower: with `cuda`, on onnxruntime's CUDA provider (accelerated_session:
    "onnx-cuda-fp16" or "onnx-cuda-fp32", checked on feeds()); otherwise, or when that fails (device.unusable: an
    error for `--device cuda`, one warning per process for `auto`), on the CPU ("onnx"). Export errors propagate."""
    if cuda:
        ensure_exported(path, export)
        try:
            session, precision = accelerated_session(path, feeds(), cuda_providers(), threads)
            return session, f"onnx-cuda-{precision}"
        except Exception as exc:  # noqa: BLE001 - whatever failed, the GPU is not usable for this tower
            device.unusable(f"{what} on onnxruntime's CUDA provider: {type(exc).__name__}: {exc}")
    return open_session(path, export, threads), "onnx"


def check_photos() -> list:
    """Two small RGB images, a smooth gradient and noise, that fp16 copies are checked on: real pixel statistics
    at both ends (flat regions and high frequencies), made here so no file is needed."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 96)[None, :, None]
    y = np.linspace(255, 0, 80)[:, None, None]
    gradient = np.concatenate([np.broadcast_to(x, (80, 96, 1)), np.broadcast_to(y, (80, 96, 1)),
                               np.broadcast_to((x + y) / 2, (80, 96, 1))], axis=2)
    noise = rng.integers(0, 256, (80, 96, 3))
    return [Image.fromarray(a.astype(np.uint8), "RGB") for a in (gradient, noise)]


# -- fp16 on accelerators ----------------------------------------------------------------------------------------

def fp16_path(fp32_path: Path) -> Path:
    """Cache file of a model's fp16 copy, beside the fp32 export it is made from (whose name carries the hash)."""
    return fp32_path.with_name(fp32_path.stem + "-fp16.onnx")


def convert_to_fp16(fp32_path: Path, out_path: Path) -> None:
    """An fp16 copy of an fp32 model (onnxruntime's converter: weights and arithmetic in fp16, inputs and outputs
    kept fp32, so the callers feed and read the same arrays; ops unsafe in fp16 stay fp32 by its block list)."""
    import onnx  # noqa: PLC0415
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(converted, str(out_path))


def output_agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """The smallest cosine between matching rows (everything after the batch axis flattened) of each output;
    -1 when the candidate has a non-finite value or another shape."""
    worst = 1.0
    for want, got in zip(reference, candidate, strict=True):
        want = np.asarray(want, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if want.shape != got.shape or not np.isfinite(got).all():
            return -1.0
        a = want.reshape(len(want), -1)
        b = got.reshape(len(got), -1)
        cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        worst = min(worst, float(cos.min()))
    return worst


def accelerated_session(path: Path, feeds: Mapping[str, np.ndarray], providers: Sequence[Any],
                        threads: int | None = None, *, fp16: bool = True,
                        min_cosine: float = FP16_MIN_COSINE) -> tuple[Any, str]:
    """(session, "fp16" | "fp32") for the exported fp32 model at `path` on `providers` (device.cuda_providers()).

    The fp32 session is made and run on `feeds` (the check that the accelerator works: its errors propagate). With
    fp16, the model's fp16 copy (cached beside it) is run on the same feeds and used when every output row agrees
    with fp32 to min_cosine (FP16_MIN_COSINE); otherwise, or when the copy cannot be made or run, fp32 is kept."""
    fp32 = create_session(path, threads, providers)
    feeds = {i.name: feeds[i.name] for i in fp32.get_inputs()}
    want = fp32.run(None, feeds)
    if not fp16:
        return fp32, "fp32"
    try:
        half_path = ensure_exported(fp16_path(path), lambda tmp: convert_to_fp16(path, tmp))
        half = create_session(half_path, threads, providers)
        agreement = output_agreement(want, half.run(None, feeds))
    except Exception as exc:  # noqa: BLE001 - fp16 is an optimisation; fp32 works
        log.info("%s: no fp16 copy (%s: %s); fp32", path.name, type(exc).__name__, exc)
        return fp32, "fp32"
    if agreement >= min_cosine:
        log.info("%s: fp16 (min cosine to fp32 %.6f)", path.name, agreement)
        return half, "fp16"
    log.info("%s: fp16 differs from fp32 (min cosine %.6f < %s); fp32", path.name, agreement, min_cosine)
    return fp32, "fp32"


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

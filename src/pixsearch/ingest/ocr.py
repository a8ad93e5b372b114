"""Text in photos (signs, menus, screenshots, documents) read with RapidOCR 3: PaddleOCR's PP-OCRv6 small
detection and recognition models as ONNX, run by onnxruntime on the CPU. The models ship inside the `rapidocr` wheel
and are passed to it by path, so its download-if-missing code is never reached: nothing is fetched at run time.

(`rapidocr` rather than the older `rapidocr-onnxruntime` 1.4: the same bundled-model idea with newer models that keep
the spaces between Latin words — 1.4's PP-OCRv4 read "Harbourlighthouse1887Station", which no keyword search finds —
and it depends on opencv-python-headless instead of the GUI build.)

Three things are added around RapidOCR:
- the image is downscaled to `max_side` first (detection time grows with the pixels, and a 12-megapixel photo
  rarely has text only readable at full size), and boxes are mapped back to the pixels of the image the caller gave;
- text turned by 90° or 270°: RapidOCR turns tall crops a quarter turn one way and trusts a 0°/180° classifier to fix
  the rest, which sometimes fails on Latin text (it reads "Heh esxed old" for "Hello pixsearch world" upside down).
  Lines read with low confidence are re-read at the other orientations and the best reading is kept;
- one model per TextReader, loaded on first use under a lock, and one inference at a time: it already uses every
  core, and RapidOCR keeps per-call flags on the instance, so concurrent calls would also interfere.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pixsearch.config import available_cores
from pixsearch.imaging import to_rgb
from pixsearch.ingest.metadata import clean_text

MAX_BOX_TEXT_CHARS = 1000
MAX_JOINED_CHARS = 8000
_MAX_REREADS = 32  # low-confidence lines re-read per image, bounding the worst case


class OcrUnavailable(RuntimeError):
    """rapidocr is not installed, or its bundled models are missing."""


class OcrError(RuntimeError):
    """The OCR engine failed on this image (the message says how)."""


@dataclass(frozen=True)
class TextBox:
    """A line of text; `box` is (x0, y0, x1, y1), the axis-aligned bounds in pixels of the image given to read()."""

    text: str
    score: float
    box: tuple[int, int, int, int]


class TextReader:
    """Reads text lines from images. Thread-safe; cheap to create (the model loads on the first read()).

    `max_side`: longer side the image is reduced to before detection. `min_score`: recognition confidence below
    which a line is dropped. `reread_below`: lines under this confidence are re-read turned (see module doc)."""

    def __init__(self, *, threads: int | None = None, max_side: int = 1600, min_score: float = 0.5,
                 reread_below: float = 0.9):
        self.threads = threads or available_cores()
        self.max_side = max_side
        self.min_score = min_score
        self.reread_below = reread_below
        self._engine: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def _model(self) -> Any:
        if self._engine is None:
            with self._load_lock:
                if self._engine is None:
                    try:
                        import rapidocr
                    except ImportError as exc:
                        raise OcrUnavailable("OCR needs the rapidocr package: pip install 'pixsearch[ocr]'") from exc
                    params: dict[str, Any] = {
                        "Global.log_level": "error",  # it warns on every image without text
                        "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
                        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                    }
                    for task, path in _bundled_models(Path(rapidocr.__file__).parent / "models").items():
                        params[f"{task}.model_path"] = str(path)  # onnxruntime is the default engine
                    self._engine = rapidocr.RapidOCR(params=params)
        return self._engine

    def load(self) -> TextReader:
        """Load the model now (e.g. before timing reads); returns self."""
        self._model()
        return self

    def read(self, image: Image.Image) -> list[TextBox]:
        """The text lines in `image`, top to bottom then left to right (RapidOCR's order)."""
        width, height = image.size
        if width < 4 or height < 4:
            return []
        scale = min(1.0, self.max_side / max(width, height))
        rgb = to_rgb(image)  # first: Pillow resamples paletted and 16-bit images poorly or not at all
        if scale < 1.0:
            rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                             Image.Resampling.BILINEAR, reducing_gap=2.0)
        bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
        engine = self._model()
        with self._run_lock:
            try:
                # Every flag every time: RapidOCR keeps them from the previous call. text_score=0: all lines come
                # back; low-confidence ones are re-read, then filtered here.
                out = engine(bgr, use_det=True, use_cls=True, use_rec=True, text_score=0.0)
                found = list(zip(out.boxes, out.txts, out.scores)) if out.boxes is not None and out.txts else []
                lines = self._reread_turned(engine, bgr, found)
            except Exception as exc:  # noqa: BLE001 - the engine's own errors (cv2, onnxruntime) -> one type
                raise OcrError(f"OCR failed: {type(exc).__name__}: {exc}") from exc
        boxes = []
        for points, text, score in lines:
            cleaned = clean_text(str(text).encode("utf-8", "replace"), MAX_BOX_TEXT_CHARS)
            if not cleaned or score < self.min_score:
                continue
            xs, ys = [p[0] / scale for p in points], [p[1] / scale for p in points]
            box = (max(0, int(min(xs))), max(0, int(min(ys))),
                   min(width, int(np.ceil(max(xs)))), min(height, int(np.ceil(max(ys)))))
            boxes.append(TextBox(cleaned, round(float(score), 4), box))
        return boxes

    def _reread_turned(self, engine: Any, bgr: np.ndarray, result: list) -> list[tuple[Any, str, float]]:
        """Re-read low-confidence lines at the orientations that make them horizontal: a tall box a quarter turn
        each way, a wide one upside down. Recognition only (no detection): a few milliseconds per line."""
        lines, rereads = [], 0
        for points, text, score in result:
            score = float(score)
            if score < self.reread_below and rereads < _MAX_REREADS:
                rereads += 1
                pts = np.asarray(points, dtype=np.float32)
                x0, y0 = np.floor(pts.min(axis=0)).astype(int)
                x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
                crop = bgr[max(0, y0): y1 + 1, max(0, x0): x1 + 1]
                if crop.shape[0] >= 4 and crop.shape[1] >= 4:
                    turns = (1, 3) if crop.shape[0] >= 1.5 * crop.shape[1] else (2,)
                    for k in turns:
                        turned = np.ascontiguousarray(np.rot90(crop, k))
                        again = engine(turned, use_det=False, use_cls=False, use_rec=True, text_score=0.0)
                        if again.txts and float(again.scores[0]) > score:
                            text, score = again.txts[0], float(again.scores[0])
            lines.append((points, text, score))
        return lines


@functools.lru_cache(maxsize=1)
def shared_reader() -> TextReader:
    """One reader per process: every ingest run (and every batch of a watch) shares its loaded model."""
    return TextReader()


def _bundled_models(folder: Path) -> dict[str, Path]:
    """The detection, recognition and orientation models in the wheel's models folder, one of each."""
    found = {}
    for task, pattern in (("Det", "*det*.onnx"), ("Rec", "*rec*.onnx"), ("Cls", "*cls*.onnx")):
        matches = sorted(folder.glob(pattern))
        if len(matches) != 1:
            raise OcrUnavailable(f"expected one bundled {task} model in {folder}, found {len(matches)}: not "
                                 "downloading one (reinstall rapidocr)")
        found[task] = matches[0]
    return found


def joined_text(boxes: Sequence[TextBox], max_chars: int = MAX_JOINED_CHARS) -> str:
    """The boxes as reading-order text: boxes whose vertical middles fall within one another's height form a line
    (left to right, joined by spaces), lines top to bottom joined by newlines. For full-text search and display."""
    lines: list[list[TextBox]] = []
    for box in sorted(boxes, key=lambda b: (b.box[1] + b.box[3]) / 2):
        middle = (box.box[1] + box.box[3]) / 2
        if lines:
            last = lines[-1]
            top, bottom = min(b.box[1] for b in last), max(b.box[3] for b in last)
            if top <= middle <= bottom:
                last.append(box)
                continue
        lines.append([box])
    text = "\n".join(" ".join(b.text for b in sorted(line, key=lambda b: b.box[0])) for line in lines)
    return clean_text(text.encode("utf-8", "replace"), max_chars) or ""

"""Faces: dlib's detectors, its 5-point landmarks and its ResNet face descriptor (128-d, 99.38 % on LFW), with the
weights the `face-recognition-models` wheel ships (nothing is downloaded at run time).

- Detectors: `hog` (dlib's frontal HOG + linear SVM; ~0.1-0.3 s per photo at DETECT_SIDE on one core) and `cnn`
  (dlib's MMOD CNN: finds turned and smaller faces, ~10x slower on a CPU). bench/faces.py measures both, and
  BlazeFace for comparison.
- A face is found in the photo scaled so its longer side is at most DETECT_SIDE (detection time grows with the
  pixels); its box is mapped back to the pixels of the image given. Its descriptor is computed from the aligned
  150 x 150 crop (dlib.get_face_chip on the 5 landmarks, as dlib's own compute_face_descriptor(image, shape) does).
- Descriptors of one person lie within an L2 distance of about 0.6 of each other (dlib's advice; the threshold
  pixsearch groups people by is measured in tests/test_faces.py and stated in service/faces.py).

The models are loaded once per process on first use, under a lock. dlib's objects are not safe to call from two
threads at once: each call takes a HOG detector and landmark predictor of its own from a pool (made when none is
free, kept for later calls), the CNN detector and the ResNet run under a lock each.
"""
from __future__ import annotations

import importlib.util
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from pixsearch.imaging import to_rgb

DESCRIPTOR_DIMS = 128
DESCRIPTOR_MODEL_ID = "dlib:face_recognition_resnet_model_v1"
DETECTORS = ("hog", "cnn")
DEFAULT_DETECTOR = "hog"
DETECT_SIDE = 1600  # longer side of the image faces are looked for in (a face of ~2.5 % of it is still found)
CHIP_SIZE = 150  # the descriptor network's input (dlib's face chips are 150 x 150, padding 0.25)
CHIP_PADDING = 0.25
THUMB_SIZE = 96  # the stored face thumbnail's side
# HOG: upsample the detection image once (faces down to ~40 px instead of ~80 px) and keep every window above
# this SVM margin; what is kept for grouping is decided later by FaceQuality.
HOG_UPSAMPLE = 1
HOG_MIN_SCORE = 0.0
CNN_UPSAMPLE = 0
CNN_MIN_SCORE = 0.0
INSTALL_HINT = "face detection needs dlib and its models: pip install 'pixsearch[faces]' (dlib-bin, face-recognition-models)"


class FacesUnavailable(RuntimeError):
    """dlib or the face-recognition-models weights are not installed."""


@dataclass(frozen=True)
class DetectedFace:
    """One face: `box` (x0, y0, x1, y1) in pixels of the image given to detect(), clipped to it; `score` the
    detector's confidence (HOG: the SVM margin, ~0-3; CNN: the MMOD score, ~0-1.2); `side` the face's side in pixels
    of the image it was aligned from (what its descriptor's quality depends on); `chip` the aligned crop (RGB,
    CHIP_SIZE square) its descriptor is computed from."""

    box: tuple[int, int, int, int]
    score: float
    side: float
    chip: np.ndarray


def model_folder() -> Path:
    """Where face-recognition-models keeps its weights (found without importing it: its __init__ needs
    pkg_resources, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FacesUnavailable(INSTALL_HINT)
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class FaceModel:
    """Detect faces (one detector) and describe them. Thread-safe; cheap to create (weights load on first use)."""

    def __init__(self, detector: str = DEFAULT_DETECTOR, *, detect_side: int = DETECT_SIDE):
        if detector not in DETECTORS:
            raise ValueError(f"unknown face detector {detector!r}; known: {', '.join(DETECTORS)}")
        self.detector_name = detector
        self.detect_side = detect_side
        self._loaded: dict[str, Any] | None = None
        self._load_lock = threading.Lock()
        self._cnn_lock = threading.Lock()
        self._describe_lock = threading.Lock()
        self._spare: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

    def load(self) -> None:
        """Load the weights now (fails with how to install them)."""
        self._models()

    def _models(self) -> dict[str, Any]:
        if self._loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    try:
                        import dlib
                    except ImportError as exc:
                        raise FacesUnavailable(INSTALL_HINT) from exc
                    folder = model_folder()
                    files = {"shape": "shape_predictor_5_face_landmarks.dat",
                             "describe": "dlib_face_recognition_resnet_model_v1.dat",
                             "cnn": "mmod_human_face_detector.dat"}
                    missing = [name for name in files.values() if not (folder / name).is_file()]
                    if missing:
                        raise FacesUnavailable(f"{INSTALL_HINT}; missing in {folder}: {', '.join(missing)}")
                    loaded: dict[str, Any] = {
                        "dlib": dlib,
                        "shape_file": str(folder / files["shape"]),
                        "describe": dlib.face_recognition_model_v1(str(folder / files["describe"])),
                    }
                    if self.detector_name == "cnn":
                        loaded["cnn"] = dlib.cnn_face_detection_model_v1(str(folder / files["cnn"]))
                    self._loaded = loaded
        return self._loaded

    @contextmanager
    def _own(self, models: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A HOG detector and landmark predictor for this call alone: two threads in one dlib detector mix up their
        images' results (measured: faces of one photo stored under another), and dlib lets go of the GIL, so one
        per thread also runs in parallel. Kept for later calls (making a HOG detector takes ~0.2 s), whatever
        thread pool they come from."""
        try:
            own = self._spare.get_nowait()
        except queue.Empty:
            dlib = models["dlib"]
            own = {"hog": dlib.get_frontal_face_detector(), "shape": dlib.shape_predictor(models["shape_file"])}
        try:
            yield own
        finally:
            self._spare.put(own)

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """The faces in an (upright) image, largest first, each with its aligned crop."""
        models = self._models()
        dlib = models["dlib"]
        rgb = to_rgb(image)
        scale = min(1.0, self.detect_side / max(rgb.width, rgb.height))
        small = rgb if scale == 1.0 else rgb.resize(
            (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BILINEAR)
        pixels = np.ascontiguousarray(np.asarray(small))
        with self._own(models) as own:
            found = self._rectangles(models, own, pixels)
            shapes = [own["shape"](pixels, rect) for rect, _ in found]
        faces = []
        for (rect, score), shape in zip(found, shapes):
            chip = np.asarray(dlib.get_face_chip(pixels, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
            x0 = max(0, round(rect.left() / scale))
            y0 = max(0, round(rect.top() / scale))
            x1 = min(rgb.width, round((rect.right() + 1) / scale))
            y1 = min(rgb.height, round((rect.bottom() + 1) / scale))
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            faces.append(DetectedFace((x0, y0, x1, y1), float(score), float(min(rect.width(), rect.height())), chip))
        faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        return faces

    def _rectangles(self, models: dict[str, Any], own: dict[str, Any], pixels: np.ndarray
                    ) -> list[tuple[Any, float]]:
        if self.detector_name == "cnn":
            with self._cnn_lock:
                found = models["cnn"](pixels, CNN_UPSAMPLE)
            return [(d.rect, d.confidence) for d in found if d.confidence >= CNN_MIN_SCORE]
        rects, scores, _ = own["hog"].run(pixels, HOG_UPSAMPLE, HOG_MIN_SCORE)
        return list(zip(rects, scores))

    def describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """The 128-d descriptors of aligned face crops (float32, one row each)."""
        if not chips:
            return np.zeros((0, DESCRIPTOR_DIMS), np.float32)
        models = self._models()
        with self._describe_lock:
            vectors = models["describe"].compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return np.asarray([np.asarray(v) for v in vectors], dtype=np.float32)


_shared: dict[str, FaceModel] = {}
_shared_lock = threading.Lock()


def shared_face_model(detector: str = DEFAULT_DETECTOR) -> FaceModel:
    """One FaceModel per detector per process (the weights are ~30 MB)."""
    with _shared_lock:
        if detector not in _shared:
            _shared[detector] = FaceModel(detector)
        return _shared[detector]


def face_thumbnail(image: Image.Image, box: tuple[int, int, int, int], size: int = THUMB_SIZE) -> Image.Image:
    """A square crop around a face box (the box widened by a fifth on each side, clipped to the image), `size` px."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * 1.4
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(image.width, round(cx + side / 2)), min(image.height, round(cy + side / 2))
    crop = to_rgb(image.crop((left, top, max(right, left + 1), max(bottom, top + 1))))
    crop.thumbnail((size, size), Image.Resampling.LANCZOS)
    return crop

"""A photo's layout: a 32 x 32 greyscale thumbnail of the whole frame, kept with each photo (1 KB, base64), and the
comparison that tells an edited copy from another shot of the same scene.

Image embeddings pool away where things are, so a burst of one scene with the subject in another place embeds
almost exactly like the first frame (cosine distance 0.04-0.2 with the offline model, as close as a cropped and
recompressed copy). The layout keeps where things are. Two photos have the same layout when some window of one —
the whole frame, or 90-100 % of each side at its start, middle or end (a crop of up to 10 %, even or not) —
correlates with the whole frame of the other, or with its mirror image (a flipped copy). Brightness and contrast drop out (each window
is standardised), so exposure edits still match; a moved subject does not.
"""
from __future__ import annotations

import base64

import numpy as np
from PIL import Image, ImageOps

SIDE = 32  # the stored thumbnail's side
COMPARED = 16  # windows are resampled to this side before they are correlated
# Measured on the sample photos (tests/test_photo_library.py): edited copies <= 0.02 but for heavily textured
# photos cropped unevenly; other frames of a burst >= 0.04.
SAME_LAYOUT = 0.03


def _windows() -> list[tuple[float, float, float, float]]:
    """The whole frame first, then every window keeping 90-100 % of each side (independently: a crop need not keep
    the aspect ratio) at the start, middle or end of that side."""
    boxes = [(0.0, 0.0, float(SIDE), float(SIDE))]
    spans = [(0.0, 1.0)] + [(start * (1 - keep), keep) for keep in (0.95, 0.9) for start in (0.0, 0.5, 1.0)]
    for x0, width in spans:
        for y0, height in spans:
            box = (x0 * SIDE, y0 * SIDE, (x0 + width) * SIDE, (y0 + height) * SIDE)
            if box not in boxes:
                boxes.append(box)
    return boxes


_WINDOWS = _windows()


def layout_signature(image: Image.Image) -> str:
    """The stored layout of an upright image: SIDE x SIDE greyscale, base64."""
    small = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX)
    return base64.b64encode(small.tobytes()).decode("ascii")


def _image(signature: str) -> Image.Image:
    return Image.frombytes("L", (SIDE, SIDE), base64.b64decode(signature))


def _standardised(image: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
    values = np.asarray(image.resize((COMPARED, COMPARED), Image.Resampling.BILINEAR, box=box), np.float32).ravel()
    values = values - values.mean()
    return values / (np.linalg.norm(values) + 1e-6)


def layout_distance(a: str, b: str) -> float:
    """1 - the best correlation between a window of one layout and the whole of the other (or its mirror image),
    both ways round: 0 for the same frame, about 0.01-0.02 after resizing or recompressing."""
    first, second = _image(a), _image(b)
    best = -1.0
    for cropped, whole in ((first, second), (second, first)):
        targets = np.stack([_standardised(whole, _WINDOWS[0]), _standardised(ImageOps.mirror(whole), _WINDOWS[0])])
        windows = np.stack([_standardised(cropped, box) for box in _WINDOWS])
        best = max(best, float((windows @ targets.T).max()))
    return 1.0 - best


def same_layout(a: str | None, b: str | None, threshold: float = SAME_LAYOUT) -> bool:
    """Whether two photos show the same frame (see the module docstring); True when either has no layout stored
    (photos indexed before layouts were), so those are grouped by their vectors alone."""
    if not a or not b:
        return True
    try:
        return layout_distance(a, b) <= threshold
    except (ValueError, TypeError):  # a malformed signature: no evidence either way
        return True

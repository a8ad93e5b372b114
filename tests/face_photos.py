"""Face test photos: the face_recognition package's own test photos (tests/fixtures/faces, MIT, see LICENSE there:
Obama on three occasions, Biden once; downscaled to 720 px) and skimage's astronaut (Eileen Collins), composed
into photos of one to four faces at several sizes, small turns and brightnesses, on backgrounds from skimage's
photos without people, some stored turned with an EXIF orientation tag. Each composed photo comes with its faces'
boxes (in pixels of the upright photo) and who they are, so detection recall/precision (IoU >= 0.5) and pairwise
grouping precision/recall can be measured (tests/test_faces.py, bench/faces.py).

The boxes of the source photos were drawn by hand (and checked against what both dlib detectors find).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

FIXTURES = Path(__file__).parent / "fixtures" / "faces"
W, H = 1280, 960
ORIENTATION = 0x0112
# how a photo is stored for each EXIF orientation so that turning it upright (ImageOps.exif_transpose) gives it back
STORED_TURN = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class Source:
    name: str
    person: str
    box: tuple[int, int, int, int]  # the face, in pixels of the source photo


def _astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


SOURCES = (
    Source("obama.jpg", "obama", (230, 90, 390, 252)),
    Source("obama2.jpg", "obama", (92, 168, 284, 360)),
    Source("obama3.jpg", "obama", (195, 86, 290, 183)),
    Source("biden.jpg", "biden", (138, 66, 243, 174)),
    Source("astronaut", "collins", (170, 70, 272, 172)),
)
BACKGROUNDS = ("coffee", "chelsea", "rocket", "coins", "hubble_deep_field", "immunohistochemistry")


def source_image(source: Source) -> Image.Image:
    if source.name == "astronaut":
        return _astronaut()
    return Image.open(FIXTURES / source.name).convert("RGB")


def background(name: str, size: tuple[int, int] = (W, H)) -> Image.Image:
    from skimage import data

    pixels = getattr(data, name)()
    image = Image.fromarray(pixels).convert("RGB")
    return image.resize(size, Image.Resampling.BICUBIC)


@dataclass
class Face:
    person: str
    box: tuple[int, int, int, int]  # in pixels of the upright composed photo


@dataclass
class Composed:
    name: str
    image: Image.Image  # upright
    faces: list[Face]
    orientation: int = 1

    def save(self, folder: Path) -> Path:
        path = folder / self.name
        if self.orientation == 1:
            self.image.save(path, quality=92)
        else:
            exif = Image.Exif()
            exif[ORIENTATION] = self.orientation
            self.image.transpose(STORED_TURN[self.orientation]).save(path, quality=92, exif=exif)
        return path


def _portrait(source: Source, face_side: int, angle: float, bright: float, flip: bool
              ) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Head and shoulders around the source's face, scaled so the face is `face_side` px, turned by `angle`
    degrees (corners transparent); the face's box in the result."""
    image = source_image(source)
    x0, y0, x1, y1 = source.box
    side = x1 - x0
    margin = int(0.6 * side)
    left, top = max(0, x0 - margin), max(0, y0 - margin)
    right, bottom = min(image.width, x1 + margin), min(image.height, y1 + side)
    crop = image.crop((left, top, right, bottom))
    box = [x0 - left, y0 - top, x1 - left, y1 - top]
    if flip:
        crop = ImageOps.mirror(crop)
        box = [crop.width - box[2], box[1], crop.width - box[0], box[3]]
    scale = face_side / side
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                       Image.Resampling.LANCZOS)
    box = [v * scale for v in box]
    if bright != 1.0:
        crop = ImageEnhance.Brightness(crop).enhance(bright)
    rgba = crop.convert("RGBA")
    turned = rgba.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    # the face box's corners turned the same way (PIL turns counter-clockwise about the centre)
    cx, cy = crop.width / 2, crop.height / 2
    ncx, ncy = turned.width / 2, turned.height / 2
    a = math.radians(angle)
    corners = [(box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])]
    moved = [(ncx + (x - cx) * math.cos(a) + (y - cy) * math.sin(a),
              ncy - (x - cx) * math.sin(a) + (y - cy) * math.cos(a)) for x, y in corners]
    xs, ys = [p[0] for p in moved], [p[1] for p in moved]
    # the turned box's bounds are larger than the face: keep the box of the face's own size around its centre
    mx, my = sum(xs) / 4, sum(ys) / 4
    half = face_side / 2
    return turned, (mx - half, my - half, mx + half, my + half)


def compose(seed: int, count: int, *, sizes: tuple[int, int] = (60, 200), max_angle: float = 12.0,
            orientation: int = 1, people: list[Source] | None = None, size: tuple[int, int] = (W, H)) -> Composed:
    """A photo of `size` (W x H) with `count` faces (of `people`, else chosen at random) at non-overlapping
    places."""
    rng = random.Random(seed)
    width, height = size
    image = background(BACKGROUNDS[seed % len(BACKGROUNDS)], size)
    chosen = people or [rng.choice(SOURCES) for _ in range(count)]
    faces: list[Face] = []
    taken: list[tuple[float, float, float, float]] = []
    for source in chosen:
        side = rng.randint(*sizes)
        patch, box = _portrait(source, side, rng.uniform(-max_angle, max_angle), rng.uniform(0.75, 1.25),
                               rng.random() < 0.5)
        for _ in range(500):
            px, py = rng.randint(0, max(0, width - patch.width)), rng.randint(0, max(0, height - patch.height))
            spot = (px, py, px + patch.width, py + patch.height)
            if all(spot[2] <= t[0] or spot[0] >= t[2] or spot[3] <= t[1] or spot[1] >= t[3] for t in taken):
                break
        else:
            continue
        taken.append(spot)
        image.paste(patch, (px, py), patch)
        fx0, fy0, fx1, fy1 = box[0] + px, box[1] + py, box[2] + px, box[3] + py
        if fx0 < 0 or fy0 < 0 or fx1 > width or fy1 > height:  # a face cut by the border is not a test of anything
            continue
        faces.append(Face(source.person, (round(fx0), round(fy0), round(fx1), round(fy1))))
    return Composed(f"composed-{seed:02d}.jpg", image, faces, orientation)


def face_set() -> list[Composed]:
    """The set tests and bench measure: 14 composed photos of 1280 x 960 and one of 4400 x 3300 (33 faces: Obama
    on 3 occasions, Biden, Collins; some stored turned with an EXIF orientation) and 3 photos of no one."""
    photos = []
    orientations = [1, 6, 1, 8, 1, 3, 1, 1, 6, 1, 1, 8, 1, 1]
    counts = [1, 2, 3, 4, 2, 3, 1, 2, 3, 2, 4, 2, 2, 2]
    for i, (orientation, count) in enumerate(zip(orientations, counts)):
        photos.append(compose(i, count, orientation=orientation))
    # a camera-sized photo: decoded at half size (JPEG draft) and looked at scaled down (models/faces.DETECT_SIDE),
    # so its boxes go through both mappings back to the original's pixels
    photos.append(compose(len(orientations), 3, sizes=(250, 520), orientation=6, size=(4400, 3300),
                          people=[SOURCES[0], SOURCES[3], SOURCES[4]]))
    for i, name in enumerate(("rocket", "coffee", "chelsea")):
        photos.append(Composed(f"no-one-{i}.jpg", background(name), []))
    return photos


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(truth: list[Face], found: list[tuple[int, int, int, int]], min_iou: float = 0.5) -> dict[int, int]:
    """Greedy one-to-one matching of found boxes to true faces by IoU (>= min_iou): found index -> truth index."""
    pairs = sorted(((iou(t.box, f), ti, fi) for ti, t in enumerate(truth) for fi, f in enumerate(found)),
                   reverse=True)
    matched: dict[int, int] = {}
    used: set[int] = set()
    for overlap, ti, fi in pairs:
        if overlap < min_iou:
            break
        if ti in used or fi in matched:
            continue
        matched[fi] = ti
        used.add(ti)
    return matched


def pairwise(labels_true: list[str], labels_found: list[object]) -> tuple[float, float]:
    """Pairwise precision and recall of a grouping: over every pair of faces, grouped together vs the same person.
    A face not grouped (None) is in no pair with anyone."""
    tp = fp = fn = 0
    n = len(labels_true)
    for i in range(n):
        for j in range(i + 1, n):
            same = labels_true[i] == labels_true[j]
            together = labels_found[i] is not None and labels_found[i] == labels_found[j]
            tp += same and together
            fp += together and not same
            fn += same and not together
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall


def descriptor_distances(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=-1)

"""Regions (object patches) as vectors of their own: boxes from a COCO-style JSON, a per-image box list (CSV or JSON
Lines), or automatic (`grid`), each cropped from the photo and embedded by the index's model into the child table
(store/regions.py). Searches then find a small object that whole-image search ranks low, with its box.

`grid` boxes: windows of 1/2, 1/3 and 1/4 of the image's sides, each sliding by half its size: 9 + 25 + 49 = 83
regions. Measured on boxes placed at random (tests/test_regions.py computes it): an object of 1/4 to 1/3 of the
sides is covered by some window with IoU >= 0.5 in 95-99 % of placements, one of 1/2 in 85 %; a plain 3x3 grid
(plus its centre) manages 20-26 %. `grid-coarse`: the 1/2 and 1/3 windows only (34 regions), for large objects.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

from pixsearch.ingest.decode import DecodedImage
from pixsearch.ingest.stage import ImageStage, StageOptions
from pixsearch.models.base import ImageEmbeddings
from pixsearch.search.context import IndexModel
from pixsearch.service.core import IndexCore
from pixsearch.service.roots import read_stored_photo
from pixsearch.store import SchemaError
from pixsearch.store.regions import PHOTO_KEY

# (window side as a fraction of the image side, stride as a fraction): see the module docstring
GRIDS = {"grid": ((1 / 2, 1 / 4), (1 / 3, 1 / 6), (1 / 4, 1 / 8)), "grid-coarse": ((1 / 2, 1 / 4), (1 / 3, 1 / 6))}
BATCH_PHOTOS = 4


@dataclass(frozen=True)
class RegionBox:
    """A box in a photo, in pixels of the original (upright) image: x0, y0 inclusive, x1, y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int
    label: str | None = None
    score: float | None = None
    region: str | None = None  # its id within the photo (default: its position in the list)


@dataclass
class RegionReport:
    photos: int = 0
    regions: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # box-list entries naming no photo of the index

    def to_json(self) -> dict[str, Any]:
        return {"photos": self.photos, "regions": self.regions,
                "failed": [{"path": p, "reason": r} for p, r in self.failed], "unmatched": self.unmatched}


def grid_boxes(width: int, height: int, layout: str = "grid") -> list[RegionBox]:
    """Sliding windows at several scales (GRIDS), in pixels of a width x height image."""
    boxes = []
    for size, stride in GRIDS[layout]:
        steps = round((1 - size) / stride) + 1
        for row in range(steps):
            for col in range(steps):
                x0, y0 = col * stride, row * stride
                boxes.append(RegionBox(round(x0 * width), round(y0 * height), round((x0 + size) * width),
                                       round((y0 + size) * height), region=f"w{round(1 / size)}-{row}-{col}"))
    return boxes


def read_box_list(path: Path) -> dict[str, list[RegionBox]]:
    """Boxes by image reference (a path or a file name) from a COCO-style JSON (images, annotations with bbox
    [x, y, width, height], categories), a CSV or a JSON Lines file (path, x0, y0, x1, y1[, label][, score])."""
    text = path.read_text(encoding="utf-8")
    boxes: dict[str, list[RegionBox]] = {}
    if path.suffix.lower() == ".json":
        coco = json.loads(text)
        if not isinstance(coco, dict) or "annotations" not in coco:
            raise ValueError(f"{path}: not a COCO-style file (needs images, annotations, categories)")
        files = {image["id"]: image["file_name"] for image in coco.get("images", [])}
        names = {c["id"]: c.get("name") for c in coco.get("categories", [])}
        for a in coco["annotations"]:
            x, y, w, h = (float(v) for v in a["bbox"])
            boxes.setdefault(files[a["image_id"]], []).append(RegionBox(
                round(x), round(y), round(x + w), round(y + h), names.get(a.get("category_id")), a.get("score"),
                str(a["id"]) if "id" in a else None))
        return boxes
    rows: Iterable[dict[str, Any]]
    if path.suffix.lower() == ".jsonl":
        rows = (json.loads(line) for line in text.splitlines() if line.strip())
    else:
        rows = csv.DictReader(text.splitlines())
    for row in rows:
        score = row.get("score")
        boxes.setdefault(str(row["path"]), []).append(RegionBox(
            int(float(row["x0"])), int(float(row["y0"])), int(float(row["x1"])), int(float(row["y1"])),
            row.get("label") or None, float(score) if score not in (None, "") else None, row.get("region") or None))
    return boxes


def add_regions(index: IndexCore, source: str | Path | dict[str, list[RegionBox]], *,
                photo_keys: Sequence[str] | None = None) -> RegionReport:
    """Embed regions of the index's photos: `grid` / `grid-coarse` (every photo, or `photo_keys`), or boxes from a
    file (or a dict of image reference -> boxes). A photo's regions from the same source are replaced."""
    if index.spec.kind != "photos":
        raise SchemaError(f"index {index.name!r} is not a photo index: regions are parts of photos")
    model = index.model()
    table_name = index.store.ensure_regions()
    grid = isinstance(source, str) and source in GRIDS
    index.update_settings({"regions": {"table": table_name, **({"auto": source} if grid else {})}})
    report = RegionReport()
    photos = _photos(index)
    if grid:
        chosen = set(photo_keys) if photo_keys is not None else None
        wanted = [_Photo(key, path, None) for key, path in photos.items() if chosen is None or key in chosen]
        label = str(source)
    else:
        boxes = read_box_list(Path(source)) if not isinstance(source, dict) else source
        wanted = _matched(photos, boxes, report)
        label = "boxes"
    _embed(index, model, wanted, label, report)
    index.store.analyze_regions()
    return report


@dataclass
class _Photo:
    """A photo to cut regions from: its boxes (None: the grid's), then the boxes cropped, in pixels of the photo."""

    key: str
    path: str
    listed: list[RegionBox] | None
    cropped: list[RegionBox] = field(default_factory=list)


def _matched(photos: dict[str, str], boxes: dict[str, list[RegionBox]], report: RegionReport) -> list[_Photo]:
    """The index's photos the box list names: the photo at that path; else the one whose path ends with it (a
    relative path); else one of that name. References naming none are reported as unmatched."""
    by_path = {path: key for key, path in photos.items()}
    by_name: dict[str, list[str]] = {}
    for key, path in photos.items():
        by_name.setdefault(os.path.basename(path), []).append(key)
    wanted = []
    for reference, listed in boxes.items():
        named = by_name.get(os.path.basename(reference), [])
        normal = os.path.normpath(reference)  # stored paths have no `.` or `..` parts: compare like with like
        key = by_path.get(normal) or next(
            (k for k in named if photos[k].endswith(os.sep + normal)), named[0] if named else None)
        if key is None:
            report.unmatched.append(reference)
        else:
            wanted.append(_Photo(key, photos[key], listed))
    return wanted


def _embed(index: IndexCore, model: IndexModel, wanted: list[_Photo], label: str, report: RegionReport) -> None:
    """Crop and embed the photos' regions through the image stage, and replace each photo's regions of this source,
    BATCH_PHOTOS photos (or more) per transaction."""
    settings = index.settings
    stage = ImageStage(model.embedder, StageOptions(batch_size=BATCH_PHOTOS, window=BATCH_PHOTOS,
                                                    workers=settings.decode_workers,
                                                    max_pixels=settings.max_image_pixels, draft=(1024, 1024)))
    keys: list[str] = []
    rows: list[dict[str, Any]] = []
    for batch in stage.run(wanted, lambda photo: read_stored_photo(index, photo.path),
                           views=partial(_crops, label=label)):
        for result in batch:
            photo = result.item
            if result.error is not None:
                report.failed.append((photo.path, result.error))
                continue
            keys.append(photo.key)
            rows.extend(_rows(photo, result.embeddings, model.columns, label))
        if len(keys) >= BATCH_PHOTOS:
            _replace(index, keys, rows, label, report)
            keys, rows = [], []
    if keys:
        _replace(index, keys, rows, label, report)


def _crops(photo: _Photo, decoded: DecodedImage, *, label: str) -> list[Image.Image]:
    """The photo's boxes (clipped to it; slivers under 2 px dropped) cut from the decoded image (in a pool thread)."""
    image = decoded.image
    sx, sy = image.width / decoded.width, image.height / decoded.height  # draft-decoded JPEGs are smaller
    chosen = photo.listed if photo.listed is not None else grid_boxes(decoded.width, decoded.height, label)
    crops = []
    for i, box in enumerate(chosen):
        x0, x1 = max(0, min(box.x0, box.x1)), min(decoded.width, max(box.x0, box.x1))
        y0, y1 = max(0, min(box.y0, box.y1)), min(decoded.height, max(box.y0, box.y1))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        photo.cropped.append(RegionBox(x0, y0, x1, y1, box.label, box.score, box.region or str(i)))
        crops.append(image.crop((round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))))
    return crops


def _rows(photo: _Photo, embedded: ImageEmbeddings, columns: dict[str, str], label: str) -> list[dict[str, Any]]:
    rows = []
    for i, box in enumerate(photo.cropped):
        row = {"id": f"{photo.key}:{box.region}", PHOTO_KEY: photo.key, "region": box.region, "x0": box.x0,
               "y0": box.y0, "x1": box.x1, "y1": box.y1, "label": box.label, "score": box.score, "source": label}
        row.update({columns[space]: v[i] for space, v in embedded.vectors.items() if space in columns})
        rows.append(row)
    return rows


def _replace(index: IndexCore, keys: list[str], rows: list[dict[str, Any]], label: str,
             report: RegionReport) -> None:
    index.store.replace_regions(keys, rows, label)
    report.photos += len(keys)
    report.regions += len(rows)


def _photos(index: IndexCore) -> dict[str, str]:
    return dict(index.store.rows_where_prefix("path", ""))  # every photo: on disk (/...) or in an object store (az://...)

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pixsearch.ingest.decode import DecodeError, decode_bytes
from pixsearch.service.core import IndexCore
from pixsearch.service.roots import PhotoNotFound, read_stored_photo
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
    index.update_settings({"regions": {"table": table_name, **({"auto": str(source)} if source in GRIDS else {})}})
    report = RegionReport()
    photos = _photos(index)
    if source in GRIDS:
        chosen = set(photo_keys) if photo_keys is not None else None
        wanted = [(key, path, None) for key, path in photos.items() if chosen is None or key in chosen]
        label = str(source)
    else:
        boxes = read_box_list(Path(source)) if not isinstance(source, dict) else source
        by_path = {path: key for key, path in photos.items()}
        by_name: dict[str, list[str]] = {}
        for key, path in photos.items():
            by_name.setdefault(os.path.basename(path), []).append(key)
        wanted = []
        for reference, listed in boxes.items():
            named = by_name.get(os.path.basename(reference), [])
            # the photo at that path; else the one whose path ends with it (a relative path); else one of that name
            normal = os.path.normpath(reference)  # stored paths have no `.` or `..` parts: compare like with like
            key = by_path.get(normal) or next(
                (k for k in named if photos[k].endswith(os.sep + normal)), named[0] if named else None)
            if key is None:
                report.unmatched.append(reference)
            else:
                wanted.append((key, photos[key], listed))
        label = "boxes"
    settings = index.settings

    def crops(item: tuple[str, str, list[RegionBox] | None]):
        key, path, listed = item
        try:
            decoded = decode_bytes(read_stored_photo(index, path), max_pixels=settings.max_image_pixels,
                                   draft=(1024, 1024))
        except (DecodeError, PhotoNotFound) as exc:
            return key, path, None, str(exc)
        image = decoded.image
        sx, sy = image.width / decoded.width, image.height / decoded.height  # draft-decoded JPEGs are smaller
        chosen = listed if listed is not None else grid_boxes(decoded.width, decoded.height, label)
        out = []
        for i, box in enumerate(chosen):
            x0, x1 = max(0, min(box.x0, box.x1)), min(decoded.width, max(box.x0, box.x1))
            y0, y1 = max(0, min(box.y0, box.y1)), min(decoded.height, max(box.y0, box.y1))
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            crop = image.crop((round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)))
            out.append((RegionBox(x0, y0, x1, y1, box.label, box.score, box.region or str(i)),
                        model.embedder.prepare_image(crop)))
        return key, path, out, None

    with ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="pixsearch-regions") as pool:
        for start in range(0, len(wanted), BATCH_PHOTOS):
            rows, keys = [], []
            for key, path, prepared, error in pool.map(crops, wanted[start : start + BATCH_PHOTOS]):
                if error is not None:
                    report.failed.append((path, error))
                    continue
                keys.append(key)
                if not prepared:
                    continue
                embedded = model.embedder.embed_images([p for _, p in prepared])
                for i, (box, _) in enumerate(prepared):
                    row = {"id": f"{key}:{box.region}", PHOTO_KEY: key, "region": box.region, "x0": box.x0,
                           "y0": box.y0, "x1": box.x1, "y1": box.y1, "label": box.label, "score": box.score,
                           "source": label}
                    row.update({model.columns[space]: v[i] for space, v in embedded.vectors.items()
                                if space in model.columns})
                    rows.append(row)
            index.store.replace_regions(keys, rows, label)
            report.photos += len(keys)
            report.regions += len(rows)
    index.store.analyze_regions()
    return report


def _photos(index: IndexCore) -> dict[str, str]:
    return dict(index.store.rows_where_prefix("path", "/"))

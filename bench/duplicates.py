"""Near-duplicate groups: recall on edited copies, precision against bursts, through `duplicate_groups` itself.

    python bench/duplicates.py [--thresholds 0.1,0.16,0.25] [--out bench/results/duplicates.json]

Photos: the ~30 sample photos (pixsearch.samples). For each, five edited copies — resized to 50 %, recompressed at
JPEG quality 40, cropped 5 % off each side, mirrored, and all of that at once with an uneven crop — which should
group with their original. Bursts: six scenes (a part of a sample photo, enlarged) with a subject pasted at three
places (9 % of the frame), three frames each, which are different shots and should not group with each other (nor with anything else).

Reported per threshold (the image vectors' cosine distance), with and without the layout check (same_frame):
recall = original-copy pairs in one group / all such pairs; burst pairs grouped; precision = grouped pairs that are
an original and its copy (or two copies of one original) / all grouped pairs. Offline model.
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from pixsearch.config import Settings
from pixsearch.samples import write_samples
from pixsearch.service import Engine
from pixsearch.service.duplicates import duplicate_groups

EDITS = ("resize", "q40", "crop5", "mirror", "all")
BACKGROUNDS = ("china-temple", "brick-wall", "flower", "hubble-deep-field", "coins", "moon")
SUBJECTS = ("cat-chelsea", "coffee", "astronaut", "rocket")


def edited(img: Image.Image, kind: str) -> tuple[Image.Image, int]:
    w, h = img.size
    if kind == "resize":
        return img.resize((w // 2, h // 2), Image.Resampling.LANCZOS), 85
    if kind == "q40":
        return img, 40
    if kind == "crop5":
        return img.crop((int(w * .05), int(h * .05), int(w * .95), int(h * .95))), 85
    if kind == "mirror":
        return ImageOps.mirror(img), 85
    uneven = img.crop((int(w * .08), 0, w, int(h * .93)))
    return ImageOps.mirror(uneven).resize((int(uneven.width * .7), int(uneven.height * .7))), 40


def make_library(folder: Path) -> tuple[dict[str, str], list[tuple[str, ...]]]:
    """Writes the photos; returns file name -> original's name, and the bursts' frame names."""
    samples = folder.parent / "samples"
    write_samples(samples)
    photos = sorted(p for p in samples.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    folder.mkdir(parents=True)
    origin: dict[str, str] = {}
    for p in photos:
        img = Image.open(p).convert("RGB")
        img.save(folder / f"{p.stem}.jpg", "JPEG", quality=95)
        origin[f"{p.stem}.jpg"] = p.stem
        for kind in EDITS:
            copy, quality = edited(img, kind)
            copy.save(folder / f"{p.stem}-{kind}.jpg", "JPEG", quality=quality)
            origin[f"{p.stem}-{kind}.jpg"] = p.stem
    by_stem = {p.stem: p for p in photos}
    bursts = []
    for i, stem in enumerate(BACKGROUNDS):
        scene = Image.open(by_stem[stem]).convert("RGB")  # a part of the photo: a scene of its own, not a copy
        background = scene.crop((0, 0, int(scene.width * 0.6), int(scene.height * 0.6))).resize((800, 600))
        subject = Image.open(by_stem[SUBJECTS[i % len(SUBJECTS)]]).convert("RGB").resize((240, 180))
        frames = []
        for j, spot in enumerate([(60, 60), (300, 220), (520, 380)]):
            frame = background.copy()
            frame.paste(subject, spot)
            name = f"burst{i}-{j}.jpg"
            frame.save(folder / name, "JPEG", quality=90)
            origin[name] = name  # each frame is its own photo
            frames.append(name)
        bursts.append(tuple(frames))
    return origin, bursts


def score(groups: list[list[str]], origin: dict[str, str], bursts: list[tuple[str, ...]]) -> dict[str, float]:
    grouped = {pair for g in groups for pair in itertools.combinations(sorted(g), 2)}
    families: dict[str, list[str]] = {}
    for name, stem in origin.items():
        families.setdefault(stem, []).append(name)
    true_pairs = {pair for names in families.values() for pair in itertools.combinations(sorted(names), 2)}
    wanted = {tuple(sorted((f"{stem}.jpg", f"{stem}-{kind}.jpg"))) for stem in families if f"{stem}.jpg" in origin
              for kind in EDITS if f"{stem}-{kind}.jpg" in origin}
    burst_pairs = {tuple(sorted(p)) for frames in bursts for p in itertools.combinations(frames, 2)}
    correct = len(grouped & true_pairs)
    return {"recall": round(len(grouped & wanted) / len(wanted), 4),
            "burst_pairs_grouped": round(len(grouped & burst_pairs) / len(burst_pairs), 4),
            "precision": round(correct / len(grouped), 4) if grouped else 1.0,
            "groups": len(groups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", default="0.1,0.16,0.25")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "duplicates.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pixsearch-dups-"))
    origin, bursts = make_library(work / "library")
    results = {}
    with Engine(Settings.load(home=work / "home")) as engine:
        index = engine.index("dups", create=True)
        index.add_paths([work / "library"])
        for threshold in [float(t) for t in args.thresholds.split(",")] + [None]:
            for same_frame in (True, False):
                groups = duplicate_groups(index, threshold, same_frame=same_frame, with_documents=True)
                named = [[g.documents[i]["filename"] for i in g.ids] for g in groups]
                key = f"threshold={threshold if threshold is not None else 'default'} same_frame={same_frame}"
                results[key] = score(named, origin, bursts)
                print(key, results[key])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

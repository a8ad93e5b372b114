"""Search-quality benchmark on the sample photos: text -> photo and altered photo -> original.

    python bench/quality.py

Three query sets, each with known right answers among the ~30 sample photos:
  * imagenet-labels: foolbox's 20 labelled ImageNet photos, queried by their class label ("strawberry");
  * free-text: hand-written everyday descriptions of the scikit-image / scikit-learn photos ("a man with a camera");
  * altered-copies: every sample resized to 60 %, cropped 10 % per side and recompressed at JPEG q55, searched by image.
Prints recall@1, recall@5 and MRR per set and writes bench/results/quality.json.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from PIL import Image

from pixsearch.config import Settings
from pixsearch.models.imagenet_classes import load_imagenet_classes
from pixsearch.samples import write_samples
from pixsearch.service import Engine, Query

FREE_TEXT = {
    "a cat": "cat-chelsea.png",
    "a cup of coffee on a saucer": "coffee.png",
    "a rocket on the launch pad": "rocket.jpg",
    "an astronaut in a space suit": "astronaut.png",
    "a motorbike": "motorcycle.png",
    "a pagoda or temple": "china-temple.jpg",
    "a flower in bloom": "flower.jpg",
    "a pile of coins": "coins.png",
    "the moon": "moon.png",
    "a brick wall": "brick-wall.png",
    "a man with a camera on a tripod": "cameraman.png",
    "galaxies in deep space": "hubble-deep-field.jpg",
}


def altered(source: Path, dest: Path) -> Path:
    img = Image.open(source).convert("RGB")
    img = img.resize((int(img.width * 0.6), int(img.height * 0.6)), Image.Resampling.BILINEAR)
    w, h = img.size
    img.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9))).save(dest, "JPEG", quality=55)
    return dest


def score(ranks: list[int | None]) -> dict:
    n = len(ranks)
    return {
        "queries": n,
        "recall@1": round(sum(r == 1 for r in ranks) / n, 3),
        "recall@5": round(sum(r is not None and r <= 5 for r in ranks) / n, 3),
        "mrr": round(sum(1 / r for r in ranks if r) / n, 3),
    }


def rank_of(hits, wanted: set[str]) -> int | None:
    for rank, hit in enumerate(hits, 1):
        if Path(hit.path).name in wanted:
            return rank
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quality.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pixsearch-quality-"))
    home = Path(os.environ.get("PIXSEARCH_HOME") or work / "home")
    photos = write_samples(work / "photos")
    classes = load_imagenet_classes()
    results: dict[str, dict] = {}
    failures: list[str] = []
    with Engine(Settings.load(home=home)) as engine:
        name = f"quality-{os.getpid()}"
        idx = engine.index(name, create=True)
        idx.add_paths([work / "photos"])

        labelled: dict[int, set[str]] = {}
        for p in photos:
            if p.name.startswith("imagenet-"):
                labelled.setdefault(int(p.stem.rsplit("-", 1)[1]), set()).add(p.name)
        # vector: the model alone; hybrid (the default for text): fused with keyword search over file names and
        # tags, where the sample photos' descriptive file names help.
        for mode in ("vector", "hybrid"):
            ranks = []
            for class_id, wanted in sorted(labelled.items()):
                label = classes[class_id].label
                r = rank_of(idx.search(label, k=len(photos), mode=mode), wanted)
                ranks.append(r)
                if r != 1:
                    failures.append(f"imagenet-labels/{mode}: {label!r} -> rank {r}")
            results[f"imagenet-labels/{mode}"] = score(ranks)

            ranks = []
            for text, wanted in FREE_TEXT.items():
                r = rank_of(idx.search(text, k=len(photos), mode=mode), {wanted})
                ranks.append(r)
                if r != 1:
                    failures.append(f"free-text/{mode}: {text!r} -> rank {r}")
            results[f"free-text/{mode}"] = score(ranks)

        ranks = []
        for p in photos:
            query = altered(p, work / f"query-{p.stem}.jpg")
            r = rank_of(idx.search(Query(image=query), k=len(photos)), {p.name})
            ranks.append(r)
            if r != 1:
                failures.append(f"altered-copies: {p.name} -> rank {r}")
        results["altered-copies"] = score(ranks)
        engine.delete_index(name)

    results["misses"] = failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for set_name, s in results.items():
        if set_name != "misses":
            print(f"{set_name:24s} n={s['queries']:3d}  R@1 {s['recall@1']:.2f}  R@5 {s['recall@5']:.2f}  MRR {s['mrr']:.2f}")
    for miss in failures:
        print("  miss:", miss)


if __name__ == "__main__":
    main()

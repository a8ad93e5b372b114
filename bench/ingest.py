"""Ingest benchmark: end-to-end `index` throughput vs model-only throughput, same images, same batch size, one run.

    python bench/ingest.py [--images 192] [--batch-size 16] [--side 2000]

Makes a folder of photo-sized JPEGs (the sample photos scaled so the long side is --side px, re-encoded at q90,
like camera/phone photos), warms the models, then measures:
  * model only: embed_images on already-decoded images, batch by batch;
  * end to end: Index.add_paths on the folder (scan, read + hash + decode in threads, embed, COPY BINARY write),
    with the per-stage split the pipeline records;
  * with OCR (unless --ocr-images 0): the first --ocr-images photos indexed without and then with `ocr=True`, and
    as many rendered signs (three lines of text each), side by side: images/s and OCR ms per image.
Prints a table and writes bench/results/ingest.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from pixsearch.config import Settings
from pixsearch.ingest.decode import read_and_decode
from pixsearch.samples import sample_files
from pixsearch.service import Engine


def make_photos(folder: Path, count: int, side: int) -> list[Path]:
    sources = [p for _, p in sorted(sample_files().items())]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = Image.open(sources[i % len(sources)]).convert("RGB")
        scale = side / max(src.size)
        img = src.resize((round(src.width * scale), round(src.height * scale)), Image.Resampling.BICUBIC)
        if (i // len(sources)) % 2:  # vary the copies so no two files are identical
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = img.rotate((i // len(sources)) * 3, resample=Image.Resampling.BILINEAR)
        path = folder / f"photo-{i:05d}.jpg"
        img.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def make_signs(folder: Path, count: int) -> list[Path]:
    """Rendered signs: three lines of words on a photo-sized canvas, like a shop front or a screenshot."""
    from PIL import ImageDraw, ImageFont

    words = ["harbour", "bakery", "station", "museum", "garden", "pharmacy", "ticket", "open", "daily", "exit"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = Image.new("RGB", (1600, 1200), (230 - i % 40, 225, 210))
        draw = ImageDraw.Draw(image)
        for line in range(3):
            text = " ".join(words[(i + line * 3 + k) % len(words)] for k in range(3)).upper()
            draw.text((80, 200 + line * 300), text, fill=(20, 20, 30), font=ImageFont.load_default(110))
        path = folder / f"sign-{i:04d}.jpg"
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def compare_ocr(engine: Engine, photos: list[Path], work: Path) -> dict:
    """The same files indexed without and with OCR, photos and signs apart."""
    import shutil

    from pixsearch.ingest.ocr import shared_reader

    shared_reader().load()  # the OCR model's load is not per image
    sets = {"photos": work / "ocr-photos", "signs": work / "ocr-signs"}
    sets["photos"].mkdir()
    for path in photos:
        shutil.copy(path, sets["photos"] / path.name)
    make_signs(sets["signs"], len(photos))
    out = {}
    for kind, folder in sets.items():
        row = {"images": len(photos)}
        for ocr in (False, True):
            name = f"bench-ocr-{os.getpid()}-{kind}-{'on' if ocr else 'off'}"
            idx = engine.index(name, create=True)
            t0 = time.perf_counter()
            report = idx.add_paths([folder], ocr=ocr)
            seconds = time.perf_counter() - t0
            assert report.added == len(photos) and not report.failed, report.to_json()
            row["with_ocr_images_per_s" if ocr else "without_ocr_images_per_s"] = round(len(photos) / seconds, 2)
            if ocr:
                # wall time added per image: the stage's own seconds also count one thread waiting for the other's
                # read (the reader runs one image at a time, on every core)
                row["ocr_ms_per_image"] = round(1000 * (1 / row["with_ocr_images_per_s"] -
                                                        1 / row["without_ocr_images_per_s"]), 1)
            engine.delete_index(name)
        out[kind] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--side", type=int, default=2000, help="long side of the generated photos, px")
    parser.add_argument("--ocr-images", type=int, default=32, help="photos (and signs) for the OCR comparison")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pixsearch-bench-"))
    home = Path(os.environ.get("PIXSEARCH_HOME") or work / "home")
    photos = make_photos(work / "photos", args.images, args.side)
    mean_bytes = sum(p.stat().st_size for p in photos) / len(photos)
    print(f"{len(photos)} photos, long side {args.side} px, {mean_bytes / 1e6:.2f} MB each; batch {args.batch_size}",
          file=sys.stderr)

    settings = Settings.load(home=home, batch_size=args.batch_size)
    with Engine(settings) as engine:
        embedder = engine.embedder
        # Warm-up: load both models and the class-text cache, so neither measurement pays for it.
        embedder.embed_images([read_and_decode(str(photos[0])).image] * 2)
        embedder.embed_texts(["warm up"])

        t0 = time.perf_counter()
        decoded = [read_and_decode(str(p)).image for p in photos]
        decode_only = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in range(0, len(decoded), args.batch_size):
            embedder.embed_images(decoded[start : start + args.batch_size])
        model_only = time.perf_counter() - t0
        del decoded

        name = f"bench-{os.getpid()}"
        idx = engine.index(name, create=True)
        t0 = time.perf_counter()
        report = idx.add_paths([work / "photos"])
        end_to_end = time.perf_counter() - t0
        rerun_t0 = time.perf_counter()
        rerun = idx.add_paths([work / "photos"])
        rerun_seconds = time.perf_counter() - rerun_t0
        engine.delete_index(name)
        ocr = compare_ocr(engine, photos[: args.ocr_images], work) if args.ocr_images else None

    n = len(photos)
    assert report.added == n and not report.failed, report.to_json()
    assert rerun.added == 0 and rerun.unchanged == n
    result = {
        "images": n,
        "batch_size": args.batch_size,
        "photo_long_side_px": args.side,
        "photo_mean_mb": round(mean_bytes / 1e6, 3),
        "model_only_images_per_s": round(n / model_only, 2),
        "end_to_end_images_per_s": round(n / end_to_end, 2),
        "end_to_end_over_model_only": round(model_only / end_to_end, 3),
        "decode_only_single_thread_images_per_s": round(n / decode_only, 2),
        "stage_seconds": {k: round(v, 3) for k, v in report.stage_seconds.items()},
        "end_to_end_seconds": round(end_to_end, 3),
        "rerun_unchanged_seconds": round(rerun_seconds, 3),
        "ocr": ocr,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"model only      {result['model_only_images_per_s']:8.2f} images/s")
    print(f"end to end      {result['end_to_end_images_per_s']:8.2f} images/s  "
          f"({result['end_to_end_over_model_only']:.0%} of model-only)")
    print(f"decode only     {result['decode_only_single_thread_images_per_s']:8.2f} images/s (1 thread, draft mode)")
    stages = result["stage_seconds"]
    print("stages (s)      " + "  ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + "   (decode is summed over its threads and overlaps embed)")
    print(f"rerun, nothing changed: {rerun_seconds:.2f} s for {n} files")
    for kind, row in (ocr or {}).items():
        print(f"{kind:6s} x{row['images']}: {row['without_ocr_images_per_s']:.2f} images/s without OCR, "
              f"{row['with_ocr_images_per_s']:.2f} with; OCR {row['ocr_ms_per_image']:.0f} ms/image")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

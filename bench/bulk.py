"""Bulk loads: pixsearch against the floor (COPY BINARY into a bare table + one CREATE INDEX), incremental upserts,
and exporting embeddings — on the same embedded server, in one run.

    python bench/bulk.py [--sizes 10000x128,100000x128,1000000x128,100000x512] [--out bench/results/bulk.json]

For each size, normalised vectors in 50 clusters:
  * floor: a bare table (text key, one vector column), COPY ... FROM STDIN (FORMAT BINARY) of every row in one
    transaction, then CREATE INDEX ... USING hnsw (m 16, ef_construction 64) with the same maintenance_work_mem and
    max_parallel_maintenance_workers pixsearch uses;
  * pixsearch: create_index + add_vectors (which takes its bulk path: load without the ANN index, build once);
  * incremental: 1,000 more rows upserted into the built index (the small-load path), rows/s;
  * export: Index.get of 10,000 ids with their vectors, and export_vectors of the whole index to .npy.
Writes bench/results/bulk.json and prints the ratios.
"""
from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from pixsearch.config import Settings
from pixsearch.service import Engine
from pixsearch.store import VectorField
from pixsearch.store.tables import _maintenance_work_mem_mb, parallel_workers, set_local


def vectors(rows: int, dims: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dims))
    x = centres[rng.integers(0, 50, rows)] + 0.3 * rng.normal(size=(rows, dims))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def floor(conninfo: str, x: np.ndarray) -> dict:
    rows, dims = x.shape
    vf = VectorField("v", dims)
    with psycopg.connect(conninfo) as conn:
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS bench_floor")
        conn.execute(sql.SQL("CREATE TABLE bench_floor (id text PRIMARY KEY, v vector({}))").format(sql.Literal(dims)))
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY bench_floor (id, v) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "vector"])
            for i in range(rows):
                copy.write_row((f"d{i}", x[i]))
        conn.commit()
        loaded = time.perf_counter()
        with conn.transaction():
            set_local(conn, {"maintenance_work_mem": f"{_maintenance_work_mem_mb(rows, vf)}MB",
                             "max_parallel_maintenance_workers": parallel_workers()})
            conn.execute("CREATE INDEX ON bench_floor USING hnsw (v vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
        built = time.perf_counter()
        conn.execute("DROP TABLE bench_floor")
        conn.commit()
    return {"copy_s": loaded - started, "index_s": built - loaded, "total_s": built - started}


def pixsearch_side(engine: Engine, x: np.ndarray) -> dict:
    rows, dims = x.shape
    name = f"bulk-{rows}-{dims}"
    idx = engine.create_index(name, [VectorField("v", dims)])
    ids = [f"d{i}" for i in range(rows)]
    started = time.perf_counter()
    idx.add_vectors(ids, x)
    total = time.perf_counter() - started
    idx = engine.index(name)
    assert idx.store.ann_index_exists(idx.spec.vector_field(None)), "the ANN index must exist after a load"
    more = vectors(1000, dims, seed=1)
    started = time.perf_counter()
    idx.add_vectors([f"n{i}" for i in range(1000)], more)
    incremental = 1000 / (time.perf_counter() - started)
    sample = ids[:: max(1, rows // 10_000)][:10_000]
    started = time.perf_counter()
    got = idx.get(sample, vectors=True)
    get_s = time.perf_counter() - started
    assert len(got) == len(sample)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        exported = idx.export_vectors(Path(tmp) / "v.npy")
        export_s = time.perf_counter() - started
        back = np.load(Path(tmp) / "v.npy")
        assert back.shape == (rows + 1000, dims) and exported == rows + 1000
    engine.delete_index(name)
    return {"load_and_build_s": total, "incremental_rows_per_s": incremental, "get_10k_s": get_s,
            "get_ids": len(sample), "export_all_s": export_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000x128,100000x128,1000000x128,100000x512")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bulk.json")
    args = parser.parse_args()
    results = []
    work = Path(tempfile.mkdtemp(prefix="pixsearch-bench-bulk-"))
    # a GB-sized data directory: removed at exit, after the embedded server is stopped (atexit runs in reverse)
    atexit.register(shutil.rmtree, work, True)
    with Engine(Settings.load(home=work / "home")) as engine:
        conninfo = engine.db.conninfo
        for size in args.sizes.split(","):
            rows, dims = (int(v) for v in size.split("x"))
            x = vectors(rows, dims)
            base = floor(conninfo, x)
            ours = pixsearch_side(engine, x)
            result = {"rows": rows, "dims": dims, "floor": base, "pixsearch": ours,
                      "ratio": ours["load_and_build_s"] / base["total_s"]}
            results.append(result)
            print(f"{rows:>9,} x {dims:<4} floor {base['total_s']:7.1f} s (COPY {base['copy_s']:.1f} + index "
                  f"{base['index_s']:.1f})  pixsearch {ours['load_and_build_s']:7.1f} s  = {result['ratio']:.2f}x   "
                  f"upsert {ours['incremental_rows_per_s']:,.0f} rows/s   get {ours['get_ids']:,} "
                  f"{ours['get_10k_s']:.2f} s   export {ours['export_all_s']:.2f} s", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The per-query floor: what a search costs inside pixsearch before pgvector does any real work.

    python bench/floor.py [--runs 2000] [--out bench/results/floor.json]

A 100-row index (so the kNN itself is next to nothing, and k = 10 hits come back), queried in process, one query at a time, on the embedded server:
  * raw: the same kNN statement on a plain psycopg connection kept open (one round trip, nothing else): the floor of
    any client;
  * plain: Index.search_vector (pool checkout, ANN settings for the transaction, the statement, commit);
  * filtered: Index.query with an OData filter (a search snapshot, iterative-scan settings, documents fetched).
Reports p50/p95 of each and pixsearch's overhead over raw. Run it on an older checkout with PYTHONPATH to compare.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from pixsearch.config import Settings
from pixsearch.search.request import SearchRequest
from pixsearch.service import Engine
from pixsearch.store import QueryOptions, VectorField


def timed(fn, runs: int) -> dict[str, float]:
    for _ in range(runs // 10):  # warm: prepared statements, caches
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * len(times))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "floor.json")
    args = parser.parse_args()
    with Engine(Settings.load(home=Path(tempfile.mkdtemp(prefix="pixsearch-floor-")))) as engine:
        idx = engine.create_index("floor", [VectorField("v", 50)])
        idx.add_vectors([str(i) for i in range(100)], np.random.default_rng(0).normal(size=(100, 50)))
        query = np.ones(50, np.float32)
        with psycopg.connect(engine.db.conninfo, autocommit=True) as conn:
            register_vector(conn)
            statement = f'SELECT id FROM "{idx.spec.table_name}" ORDER BY v <=> %s LIMIT 10'
            raw = timed(lambda: conn.execute(statement, (query,), prepare=True).fetchall(), args.runs)
        plain = timed(lambda: idx.search_vector(query, 10, options=QueryOptions(ef_search=40)), args.runs)
        filtered = timed(lambda: idx.query(SearchRequest(vector=query, top=10, filter="id ne '0'")), args.runs)
    result = {"raw": raw, "plain": plain, "filtered": filtered,
              "overhead_plain_ms": plain["p50_ms"] - raw["p50_ms"],
              "overhead_filtered_ms": filtered["p50_ms"] - raw["p50_ms"]}
    for name in ("raw", "plain", "filtered"):
        print(f"{name:9s} p50 {result[name]['p50_ms']:.3f} ms  p95 {result[name]['p95_ms']:.3f} ms")
    print(f"overhead over raw: plain {result['overhead_plain_ms']:.3f} ms, filtered {result['overhead_filtered_ms']:.3f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

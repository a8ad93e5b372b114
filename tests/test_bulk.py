"""Bulk loads (load without the ANN index, build it once), their kill safety, searches during a rebuild, and
exporting embeddings bit-exactly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from pixsearch.config import Settings
from pixsearch.search.request import SearchRequest
from pixsearch.service import Engine
from pixsearch.service.builds import BULK_MIN_ROWS
from pixsearch.store import QueryOptions, VectorField

DIMS = 32


def _vectors(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIMS))
    return (centres[rng.integers(0, 40, rows)] + 0.4 * rng.normal(size=(rows, DIMS))).astype(np.float32)


def _ann_ready(engine: Engine, name: str) -> bool:
    idx = engine.index(name)
    return all(idx.store.ann_indexes_ready().values())


def _ann_index_oid(engine: Engine, name: str) -> int | None:
    idx = engine.index(name)
    with engine.db.connection() as conn:
        return conn.execute("SELECT to_regclass(%s)::oid", (idx.store.ann_index_name(idx.spec.vector_field(None)),)
                            ).fetchone()[0]


@contextmanager
def index_builds(engine: Engine) -> Iterator[list[str]]:
    """The name of every index that a CREATE INDEX or REINDEX made in the database meanwhile, in order, as an event
    trigger (the test server's role is a superuser) records them; the list is filled when the block ends."""
    tag = uuid.uuid4().hex[:8]
    log, function, trigger = f"test_builds_{tag}", f"test_record_build_{tag}", f"test_builds_{tag}"
    with engine.db.connection() as conn:
        conn.execute(f"CREATE TABLE {log} (n bigserial, identity text)")
        conn.execute(f"CREATE FUNCTION {function}() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN "
                     f"INSERT INTO {log} (identity) SELECT object_identity FROM pg_event_trigger_ddl_commands(); "
                     "END $$")
        conn.execute(f"CREATE EVENT TRIGGER {trigger} ON ddl_command_end WHEN TAG IN ('CREATE INDEX', 'REINDEX') "
                     f"EXECUTE FUNCTION {function}()")
        conn.commit()
    built: list[str] = []
    try:
        yield built
    finally:
        with engine.db.connection() as conn:
            conn.execute(f"DROP EVENT TRIGGER {trigger}")
            rows = conn.execute(f"SELECT identity FROM {log} ORDER BY n").fetchall()
            built += [identity.rpartition(".")[2] for (identity,) in rows]  # schema.name -> name
            conn.execute(f"DROP FUNCTION {function}()")
            conn.execute(f"DROP TABLE {log}")


def test_bulk_and_incremental_loads_give_the_same_results(engine):
    x = _vectors(BULK_MIN_ROWS + 2000)
    ids = [f"d{i}" for i in range(len(x))]
    bulk = engine.create_index("bulk-" + uuid.uuid4().hex[:6], [VectorField("v", DIMS)])
    assert bulk.bulk_wanted(len(x))
    with index_builds(engine) as bulk_builds:
        bulk.add_vectors(ids, x)
    ann = bulk.store.ann_index_name(bulk.spec.vector_field(None))
    assert bulk_builds.count(ann) == 1, bulk_builds  # dropped for the load, built once after it
    step = engine.create_index("step-" + uuid.uuid4().hex[:6], [VectorField("v", DIMS)])
    step_oid = _ann_index_oid(engine, step.name)
    with index_builds(engine) as step_builds:
        for start in range(0, len(x), 900):  # each chunk small for the table: the incremental path
            assert not step.bulk_wanted(900) or start == 0
            step.add_vectors(ids[start : start + 900], x[start : start + 900])
    assert step_oid is not None and _ann_index_oid(engine, step.name) == step_oid  # kept and grown in place
    assert step.store.ann_index_name(step.spec.vector_field(None)) not in step_builds, step_builds
    assert _ann_ready(engine, bulk.name) and _ann_ready(engine, step.name)
    assert "bulk_load" not in engine.index(bulk.name).spec.settings
    rng = np.random.default_rng(1)
    for q in x[rng.integers(0, len(x), 10)] + 0.05:
        for options in (QueryOptions(exact=True), QueryOptions(ef_search=400)):
            got = [[h.id for h in engine.index(n).search_vector(q, 10, options=options)] for n in (bulk.name, step.name)]
            assert got[0] == got[1]


def test_a_killed_bulk_load_is_finished_by_the_next_one(home, tmp_path):
    rows = 60_000
    x = _vectors(rows, seed=2)
    np.save(tmp_path / "v.npy", x)
    (tmp_path / "ids.txt").write_text("".join(f"d{i}\n" for i in range(rows)))
    name = "killed-bulk-" + uuid.uuid4().hex[:6]
    env = dict(os.environ, PIXSEARCH_HOME=str(home))
    exe = Path(sys.executable).with_name("pixsearch")
    assert subprocess.run([str(exe), "indexes", "create", name, "--dims", str(DIMS)], env=env,
                          capture_output=True).returncode == 0
    add = [str(exe), "vectors", "add", name, str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.txt")]
    proc = subprocess.Popen(add, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with Engine(Settings.load(home=home)) as engine:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and engine.index(name).count() < 10_000:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        idx = engine.index(name)
        assert 10_000 <= idx.count() < rows and idx.spec.settings.get("bulk_load")
        assert not _ann_ready(engine, name)  # dropped for the load: searches are exact meanwhile, and say so
        during = idx.query(SearchRequest(vector=x[5], top=3))
        assert during[0].id == "d5" and during.building
    r = subprocess.run(add, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with Engine(Settings.load(home=home)) as engine:
        idx = engine.index(name)
        assert idx.count() == rows and _ann_ready(engine, name) and "bulk_load" not in idx.spec.settings
        with engine.db.connection() as conn:
            assert conn.execute(f"SELECT count(DISTINCT id) FROM {idx.spec.table_name}").fetchone()[0] == rows
        plan = idx.explain(vector=x[7], k=10)
        assert f"Index Scan using {idx.store.ann_index_name(idx.spec.vector_field(None))}" in plan


def test_searches_succeed_during_a_bulk_rebuild(engine):
    x = _vectors(40_000, seed=3)
    idx = engine.create_index("during-" + uuid.uuid4().hex[:6], [VectorField("v", DIMS)])
    idx.add_vectors([f"a{i}" for i in range(2000)], x[:2000])
    errors, answers = [], []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            try:
                result = engine.index(idx.name).query(SearchRequest(vector=x[1], top=5))
                answers.append((result[0].id, result.building))
            except Exception as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)

    thread = threading.Thread(target=search)
    thread.start()
    try:
        idx.add_vectors([f"b{i}" for i in range(38_000)], x[2000:])
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert answers and all(first == "a1" for first, _ in answers)
    assert any(building for _, building in answers)  # some searches ran while the index was down, and said so
    assert _ann_ready(engine, idx.name)


def test_export_round_trips_bit_exactly(engine, tmp_path):
    x = _vectors(12_000, seed=4)
    ids = [f"k{i:05d}" for i in range(len(x))]
    idx = engine.create_index("export-" + uuid.uuid4().hex[:6], [VectorField("v", DIMS)])
    idx.add_vectors(ids, x)
    written = idx.export_vectors(tmp_path / "out.npy", ids_path=tmp_path / "ids.txt")
    assert written == len(x)
    exported = np.load(tmp_path / "out.npy")
    order = (tmp_path / "ids.txt").read_text().split()
    assert order == sorted(ids) and exported.dtype == np.float32
    assert np.array_equal(exported, x[[int(k[1:]) for k in order]])
    got = idx.get(ids[:10_000])
    assert all(np.array_equal(got[k]["v"], x[i]) for i, k in enumerate(ids[:10_000]))


@pytest.mark.parametrize("rows, expected", [(BULK_MIN_ROWS, True), (500, False)])
def test_the_bulk_rule(engine, rows, expected):
    idx = engine.create_index("rule-" + uuid.uuid4().hex[:6], [VectorField("v", DIMS)])
    assert idx.bulk_wanted(rows) is expected
    idx.add_vectors([f"d{i}" for i in range(5000)], _vectors(5000))
    assert idx.bulk_wanted(1000) is True and idx.bulk_wanted(999) is False  # 20 % of 5,000, and the 1,000 floor
    assert engine.create_index("exact-" + uuid.uuid4().hex[:6],
                               [VectorField("v", DIMS, algorithm="exact")]).bulk_wanted(10**6) is False

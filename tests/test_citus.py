"""pixsearch on a real Citus cluster (a coordinator and two workers on 127.0.0.1, TCP + password), against the same
cases on one node: results must agree. The cluster is built and started by conftest.citus_cluster."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import run_cli
from helpers import chromium_browser, noise_images
from pixsearch.api import create_app
from pixsearch.api.server import serving_in_thread
from pixsearch.config import Settings
from pixsearch.search.odata import parse_filter
from pixsearch.search.request import SearchRequest
from pixsearch.service import Engine
from pixsearch.store import Field, QueryOptions, SchemaError, VectorField

ROWS, DIMS, CATEGORIES = 20_000, 32, 100  # each category is 1 % of the rows
# Run on every shard (Citus puts the shard's table where '%s' is; doubled for psycopg): its HNSW indexes' bytes.
HNSW_BYTES = ("SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0) FROM pg_index i JOIN pg_class c ON c.oid = "
              "i.indexrelid JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = '%%s'::regclass AND a.amname = 'hnsw'")


@pytest.fixture(scope="module")
def dsn(citus_cluster) -> str:
    return citus_cluster.dsn + "?sslmode=prefer"  # host, port, user, password and sslmode, as a deployment has


@pytest.fixture(scope="module")
def engines(home, embedder, dsn, citus_home):
    local = Engine(Settings.load(home=home), embedder=embedder)
    cluster = Engine(Settings.load(home=citus_home, database_url=dsn, distribute=True), embedder=embedder)
    yield {"local": local, "citus": cluster}
    local.close()
    cluster.close()


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(50, DIMS))
    return (centres[rng.integers(0, 50, ROWS)] + 0.6 * rng.normal(size=(ROWS, DIMS))).astype(np.float32)


@pytest.fixture(scope="module")
def vector_indexes(engines, vectors) -> dict[str, str]:
    names = {}
    for backend, engine in engines.items():
        name = f"vec-{backend}-{uuid.uuid4().hex[:6]}"
        idx = engine.create_index(name, [VectorField("v", DIMS)], [Field("cat", "int", filterable=True,
                                                                          facetable=True)])
        idx.add_vectors([f"d{i}" for i in range(ROWS)], vectors, [{"cat": i % CATEGORIES} for i in range(ROWS)])
        names[backend] = name
    return names


def _queries(vectors: np.ndarray, n: int = 20) -> np.ndarray:
    rng = np.random.default_rng(3)
    return vectors[rng.integers(0, ROWS, n)] + 0.1 * rng.normal(size=(n, DIMS)).astype(np.float32)


def test_the_cluster_is_really_distributed(engines, vector_indexes, citus_cluster):
    idx = engines["citus"].index(vector_indexes["citus"])
    stats = idx.stats()
    assert idx.store.distributed and stats["shards"] == 8 and stats["nodes"] == 2 and stats["rows"] == ROWS
    with engines["citus"].db.connection() as conn:
        shard_indexes = conn.execute(
            "SELECT count(*) FROM run_command_on_shards(%s, $$" + HNSW_BYTES + "$$) r WHERE r.result::bigint > 0",
            (idx.spec.table_name,)).fetchone()[0]
    assert shard_indexes == 8  # the HNSW index exists on every shard
    assert not engines["local"].index(vector_indexes["local"]).store.distributed


def test_exact_top_k_is_identical_and_ann_recall_matches_one_node(engines, vector_indexes, vectors):
    local, cluster = (engines[b].index(vector_indexes[b]) for b in ("local", "citus"))
    for q in _queries(vectors):
        exact = [[h.id for h in idx.search_vector(q, 10, options=QueryOptions(exact=True))] for idx in (local, cluster)]
        assert exact[0] == exact[1]
    options = QueryOptions(ef_search=20)
    recall = {name: idx.evaluate(k=10, sample=60, options=options).recall for name, idx in
              (("local", local), ("citus", cluster))}
    assert recall["citus"] >= recall["local"] - 0.02, recall  # ef_search is per shard: at least one node's recall


def test_a_one_percent_filter_still_returns_k(engines, vector_indexes, vectors):
    for backend in ("local", "citus"):
        idx = engines[backend].index(vector_indexes[backend])
        for q in _queries(vectors, 5):
            result = idx.query(SearchRequest(vector=q, filter="cat eq 7", top=10))
            assert len(result) == 10 and result.complete, (backend, result.reason)
            exact = idx.query(SearchRequest(vector=q, filter="cat eq 7", top=10, options=QueryOptions(exact=True)))
            assert len({h.id for h in result} & {h.id for h in exact}) >= 8
            assert all(int(h.id[1:]) % CATEGORIES == 7 for h in result)


@pytest.fixture(scope="module")
def two_shard_index(dsn, citus_home, embedder, vectors):
    """The same rows in 2 shards of 10,000. In 8 shards of 2,500 (vector_indexes) each worker plans a filtered kNN
    query as a Seq Scan + Sort, exact whatever the ANN settings say; at 10,000 rows a shard it takes the HNSW index,
    so here the settings the coordinator sends the workers decide the results."""
    engine = Engine(Settings.load(home=citus_home, database_url=dsn, distribute=True, shards=2), embedder=embedder)
    name = "two-shards-" + uuid.uuid4().hex[:6]
    idx = engine.create_index(name, [VectorField("v", DIMS)], [Field("cat", "int", filterable=True)])
    idx.add_vectors([f"d{i}" for i in range(ROWS)], vectors, [{"cat": i % CATEGORIES} for i in range(ROWS)])
    yield engine.index(name)
    engine.close()


def test_the_workers_search_their_hnsw_indexes_with_iterative_scans(two_shard_index, vectors):
    idx = two_shard_index
    assert idx.stats()["shards"] == 2
    two_percent = "cat lt 2"
    plan = idx.explain(vector=vectors[0], k=10, filter=parse_filter(two_percent))
    ann = idx.store.ann_index_name(idx.spec.vector_field(None))
    assert plan.count(f"Index Scan using {ann}_") == 2 and "Seq Scan" not in plan, plan  # each shard's own index
    for q in _queries(vectors, 5):
        result = idx.query(SearchRequest(vector=q, filter=two_percent, top=10))
        assert len(result) == 10 and result.complete, result.reason  # the workers scanned on past ef_search
        assert all(int(h.id[1:]) % CATEGORIES < 2 for h in result)
        # the control: the same query without iterative scans stops at ef_search candidates, ~2 % of them passing
        single_pass = idx.query(SearchRequest(vector=q, filter=two_percent, top=10,
                                              options=QueryOptions(iterative=False)))
        assert len(single_pass) < 10 and not single_pass.complete


def test_stats_are_the_sum_over_every_shard(engines, vector_indexes):
    idx = engines["citus"].index(vector_indexes["citus"])
    stats = idx.stats()
    with engines["citus"].db.connection() as conn:
        table, total, index = conn.execute(
            "SELECT sum(t.result::bigint), sum(a.result::bigint), sum(i.result::bigint) FROM"
            " run_command_on_shards(%(t)s, $$SELECT pg_table_size('%%s')$$) t"
            " JOIN run_command_on_shards(%(t)s, $$SELECT pg_total_relation_size('%%s')$$) a USING (shardid)"
            " JOIN run_command_on_shards(%(t)s, $$" + HNSW_BYTES + "$$) i USING (shardid)",
            {"t": idx.spec.table_name}).fetchone()
    assert stats["table_bytes"] == table > 0 and stats["total_bytes"] == total
    assert stats["vector_fields"]["v"]["ann_index_bytes"] == index > 0


def test_explain_shows_every_shards_plan(engines, vector_indexes, vectors):
    idx = engines["citus"].index(vector_indexes["citus"])
    plan = idx.explain(vector=vectors[0], k=10)
    assert "Task Count: 8" in plan and "Tasks Shown: All" in plan and plan.count("->  Task") == 8
    tuned = idx.tune(0.9, sample=40)
    assert tuned["tuned"]["recall"] >= 0.9 and tuned["tuned"]["ef_search"]


def test_writes_deletes_facets_rename_and_delete(engines):
    engine = engines["citus"]
    name = "docs-" + uuid.uuid4().hex[:6]
    idx = engine.create_index(name, [VectorField("v", 3)], [Field("title", "string", searchable=True, filterable=True,
                                                                   facetable=True)])
    idx.add_vectors(["a", "b", "c"], np.eye(3, dtype=np.float32), [{"title": t} for t in ("red car", "blue sky", "red")])
    from pixsearch.service import DocumentAction, Outcome

    results = idx.write_documents([DocumentAction("merge", "a", {"title": "green car"}),
                                   DocumentAction("delete", "c"), DocumentAction("merge", "zz", {"title": "x"})])
    assert [r.outcome for r in results] == [Outcome.WRITTEN, Outcome.DELETED, Outcome.NOT_FOUND]
    hybrid = idx.query(SearchRequest(text="car", facets=["title"], vector_queries=[]))  # keyword only: no model
    assert [h.id for h in hybrid] == ["a"] and hybrid.facets["title"]
    renamed = engine.rename_index(name, name + "-b")
    assert renamed.store.distributed and renamed.count() == 2 and renamed.stats()["shards"] == 8
    engine.delete_index(name + "-b")
    with engine.db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM citus_shards WHERE table_name::text LIKE %s",
                            (renamed.spec.table_name + "%",)).fetchone()[0] == 0


def test_distribute_an_existing_index_and_refusal_without_citus(engines, vectors):
    engine = engines["citus"]
    name = "later-" + uuid.uuid4().hex[:6]
    idx = engine.create_index(name, [VectorField("v", DIMS)], distributed=False)
    idx.add_vectors([f"d{i}" for i in range(500)], vectors[:500])
    assert not idx.store.distributed
    before = [h.id for h in idx.search_vector(vectors[9], 5, options=QueryOptions(exact=True))]
    r = run_cli("indexes", "distribute", name, "--shards", "4", home=engine.settings.home,
                env={"PIXSEARCH_DATABASE_URL": engine.settings.database_url})
    assert r.returncode == 0 and "500 rows in 4 shards on 2 nodes" in r.stderr, r.stderr
    idx = engine.index(name)
    assert idx.store.distributed and idx.count() == 500
    assert [h.id for h in idx.search_vector(vectors[9], 5, options=QueryOptions(exact=True))] == before
    with engine.db.connection() as conn:
        # The coordinator keeps no copy of the rows: its own table is empty on disk. (Citus routes even a
        # `SELECT ... FROM ONLY` on a distributed table to the shards, so a count cannot tell.)
        assert conn.execute("SELECT pg_relation_size(%s)", (idx.spec.table_name,)).fetchone()[0] == 0
    local = engines["local"].create_index("nocitus-" + uuid.uuid4().hex[:6], [VectorField("v", 3)])
    with pytest.raises(SchemaError, match="no Citus extension"):
        engines["local"].distribute_index(local.name)


def test_photo_ingest_killed_and_rerun_stores_every_file_once(dsn, citus_home, tmp_path):
    folder = tmp_path / "photos"
    noise_images(folder, 120, 60, 80, seed=8)
    name = "kill-" + uuid.uuid4().hex[:6]
    env = dict(os.environ, PIXSEARCH_HOME=str(citus_home), PIXSEARCH_DATABASE_URL=dsn, PIXSEARCH_DISTRIBUTE="1",
               PIXSEARCH_BATCH_SIZE="4")
    exe = Path(sys.executable).with_name("pixsearch")
    proc = subprocess.Popen([str(exe), "index", str(folder), "--index", name], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    with Engine(Settings.load(home=citus_home, database_url=dsn)) as engine:
        deadline, rows = time.monotonic() + 180, 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                rows = engine.index(name).count()
            except LookupError:
                rows = 0
            if rows >= 8:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 8 <= engine.index(name).count() < 120
    r = subprocess.run([str(exe), "index", str(folder), "--index", name, "--json"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with Engine(Settings.load(home=citus_home, database_url=dsn)) as engine:
        idx = engine.index(name)
        assert idx.store.distributed
        with engine.db.connection() as conn:
            total, paths = conn.execute(f"SELECT count(*), count(DISTINCT path) FROM {idx.spec.table_name}").fetchone()
        assert total == paths == 120


@pytest.fixture(scope="module")
def cluster_photos(engines, samples) -> str:
    engine = engines["citus"]
    name = "photos-" + uuid.uuid4().hex[:6]
    report = engine.index(name, create=True).add_paths([samples])
    assert not report.failed and engine.index(name).store.distributed
    return name


def test_the_api_and_the_page_work_against_the_cluster(engines, cluster_photos, samples, citus_cluster):
    engine = engines["citus"]
    _, secret = engine.create_api_key("admin", "cluster test")  # stored in the coordinator's key table
    app = create_app(engine, key_lookup=engine.api_key_role, page_index=cluster_photos)
    with serving_in_thread(app) as url, httpx.Client(base_url=url, headers={"api-key": secret}, timeout=60) as api:
        r = api.post(f"/indexes/{cluster_photos}/docs/search", json={"search": "a cup of coffee", "top": 3,
                                                                      "facets": ["tags"], "count": True})
        assert r.status_code == 200 and r.json()["value"][0]["path"].endswith("coffee.png"), r.text
        key = r.json()["value"][0]["id"]
        assert api.get(f"/thumbnails/{key}", params={"index": cluster_photos, "size": 128}).status_code == 200
        upload = api.post(f"/indexes/{cluster_photos}/images",
                          files={"files": ("new.jpg", (samples / "rocket.jpg").read_bytes())})
        assert upload.status_code == 200, upload.text
        more = api.post(f"/indexes/{cluster_photos}/docs/search", json={"vectorQueries": [{"kind": "id", "id": key}],
                                                                        "top": 1})
        assert more.json()["value"][0]["id"] == key
        with chromium_browser() as browser:
            page = browser.new_page()
            page.goto(f"{url}/#key={secret}")
            page.wait_for_selector("#results li img[src^='blob:']", timeout=30_000)
            page.fill("#q", "a rocket")
            page.press("#q", "Enter")
            page.wait_for_function("document.querySelector('#results-heading').textContent.includes('rocket')")
            page.wait_for_selector("#results li", timeout=30_000)

        # a worker restarts: the request that meets it fails cleanly (503), and the next ones succeed
        citus_cluster.restart_worker(0)
        first = api.post(f"/indexes/{cluster_photos}/docs/search", json={"search": "a cat", "top": 3})
        assert first.status_code in (200, 503), first.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            again = api.post(f"/indexes/{cluster_photos}/docs/search", json={"search": "a cat", "top": 3})
            if again.status_code == 200:
                break
            assert again.status_code == 503, again.text
            time.sleep(0.5)
        assert again.status_code == 200


def test_regions_live_with_their_photos_on_the_cluster(engines, cluster_photos):
    idx = engines["citus"].index(cluster_photos)
    keys = [h.id for h in idx.query(SearchRequest(text="a cup of coffee", top=3))]
    report = idx.add_regions("grid-coarse", photo_keys=keys)
    assert report.photos == 3 and report.regions == 3 * 34
    with engines["citus"].db.connection() as conn:
        colocation = conn.execute(
            "SELECT count(DISTINCT colocationid) FROM pg_dist_partition WHERE logicalrelid IN (%s::regclass, %s::regclass)",
            (idx.spec.table_name, idx.spec.table_name + "_regions")).fetchone()[0]
    assert colocation == 1  # same distribution key, same shards: a photo and its regions are on one node
    found = idx.query(SearchRequest(text="a cup of coffee", top=2, regions="images"))
    assert found[0].id == keys[0] and found[0].region["box"]
    idx.remove([keys[0]])
    assert keys[0] not in [h.id for h in idx.query(SearchRequest(text="a cup of coffee", top=3, regions="images"))]


def test_doctor_reports_the_cluster(dsn, citus_home, cluster_photos):
    r = run_cli("doctor", "--json", home=citus_home, env={"PIXSEARCH_DATABASE_URL": dsn})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["citus_version"].startswith("14.") and report["features"]["distribution"]
    assert len(report["nodes"]) == 3
    photos = next(i for i in report["indexes"] if i["name"] == cluster_photos)
    assert photos["distributed"] and photos["shards"] == 8 and photos["nodes"] == 2
    assert any("per shard" in line for line in report["advice"])


def test_a_new_worker_takes_shards_after_a_rebalance(engines, citus_cluster, vectors):
    """docs/citus.md's steps: add a worker, rebalance, and every search still finds the same rows."""
    engine = engines["citus"]
    name = "grow-" + uuid.uuid4().hex[:6]
    idx = engine.create_index(name, [VectorField("v", DIMS)])
    idx.add_vectors([f"d{i}" for i in range(2000)], vectors[:2000])
    before = [h.id for h in idx.search_vector(vectors[3], 10, options=QueryOptions(exact=True))]
    citus_cluster.add_worker()
    with psycopg_admin(citus_cluster) as conn:
        conn.execute("SELECT citus_rebalance_start(shard_transfer_mode => 'block_writes')")
        conn.execute("SELECT citus_rebalance_wait()")
    stats = engine.index(name).stats()
    assert stats["nodes"] == 3 and stats["rows"] == 2000
    assert [h.id for h in engine.index(name).search_vector(vectors[3], 10, options=QueryOptions(exact=True))] == before


def psycopg_admin(cluster):
    import psycopg

    return psycopg.connect(cluster.admin_dsn(), autocommit=True)

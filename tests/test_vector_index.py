"""The vector index engine on precomputed vectors: every algorithm x metric x storage, filters that still return k,
recall evaluation and tuning, index management. Real PostgreSQL + pgvector; ground truth computed with numpy."""
from __future__ import annotations

import numpy as np
import psycopg
import pytest

from pixsearch.store import (
    AnyEq,
    Compare,
    Field,
    IndexExistsError,
    IndexNotFoundError,
    QueryOptions,
    SchemaError,
    VectorField,
)
from pixsearch.search.request import SearchRequest
from pixsearch.store import update_settings
from pixsearch.store.schema import SUPPORTED
from pixsearch.store.tables import DocumentTable

ROWS, DIMS, CLUSTERS = 3000, 32, 60


def clustered(rows: int, dims: int, clusters: int, seed: int = 7) -> np.ndarray:
    """Well-separated clusters: neighbours are unambiguous under every metric, even after binary quantisation."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dims)) * 3
    labels = np.arange(rows) % clusters
    return (centres[labels] + rng.normal(size=(rows, dims)) * 0.3).astype(np.float32)


def exact_top_k(data: np.ndarray, q: np.ndarray, metric: str, k: int) -> list[int]:
    if metric == "cosine":
        d = 1 - (data @ q) / (np.linalg.norm(data, axis=1) * np.linalg.norm(q))
    elif metric == "ip":
        d = -(data @ q)
    elif metric == "l2":
        d = np.linalg.norm(data - q, axis=1)
    elif metric == "l1":
        d = np.abs(data - q).sum(axis=1)
    else:
        raise AssertionError(metric)
    return list(np.argsort(d, kind="stable")[:k])


COMBINATIONS = sorted(
    (algorithm, storage, metric) for algorithm, pairs in SUPPORTED.items() for storage, metric in pairs
)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(ROWS, DIMS, CLUSTERS)


@pytest.mark.parametrize("algorithm, storage, metric", COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_every_combination_builds_is_used_and_is_exact_on_small_data(engine, index_name, data, algorithm, storage,
                                                                     metric):
    params = {"oversample": 8} if storage == "bit" else {}
    vf = VectorField("v", DIMS, metric=metric, storage=storage, algorithm=algorithm, params=params)
    idx = engine.create_index(index_name, [vf])
    ids = [str(i) for i in range(ROWS)]
    idx.add_vectors(ids, data)
    if algorithm == "ivfflat":
        (built,) = idx.build()
        assert built["lists"] == 10 and built["rows"] == ROWS  # rows/1000, at least 10
    with engine.db.connection() as conn:
        conn.execute("ANALYZE " + idx.spec.table_name)

    q = data[123] + 0.01
    plan = idx.explain(vector=q, k=10)
    ann_index = idx.store.ann_index_name(idx.spec.vector_field("v"))
    if algorithm == "exact":
        assert "Index Scan" not in plan and "Seq Scan" in plan, plan
    else:
        assert f"Index Scan using {ann_index}" in plan, plan

    # Generous search settings on small data: the ANN result must equal the exact top-k.
    stored = data.astype(np.float16).astype(np.float32) if storage == "halfvec" else data
    exact_metric = "cosine" if storage == "bit" else metric
    for row in (5, 123, 2999):
        q = data[row] + 0.01
        hits = idx.search_vector(q, 10, options=QueryOptions(ef_search=1000, probes=10))
        q_stored = q.astype(np.float16).astype(np.float32) if storage == "halfvec" else q  # the query is halfvec too
        assert [int(h.id) for h in hits] == exact_top_k(stored, q_stored, exact_metric, 10)
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


@pytest.fixture(scope="module")
def filtered_index(home, embedder):
    """20,000 vectors with a 100-valued category: each value selects 1% of the rows."""
    from pixsearch.config import Settings
    from pixsearch.service import Engine

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(20000, 16)).astype(np.float32)
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        try:
            engine.delete_index("filtered")
        except IndexNotFoundError:
            pass
        idx = engine.create_index(
            "filtered",
            [VectorField("v", 16, metric="l2")],
            [Field("category", "int", filterable=True), Field("labels", "string[]", filterable=True)],
        )
        docs = [{"category": i % 100, "labels": ["rare"] if i in (17, 4711, 9999) else ["common"]}
                for i in range(20000)]
        idx.add_vectors([str(i) for i in range(20000)], vectors, docs)
        yield engine, idx, vectors


def test_a_one_percent_filter_still_returns_k(filtered_index):
    engine, idx, vectors = filtered_index
    q = np.random.default_rng(11).normal(size=16).astype(np.float32)
    only_seven = Compare("category", "eq", 7)

    without = idx.search_vector(q, 10, filter=only_seven, options=QueryOptions(iterative=False))
    assert len(without.hits) < 10 and not without.complete and without.reason == "scan_limit"

    result = idx.search_vector(q, 10, filter=only_seven)
    assert len(result.hits) == 10 and result.complete
    assert all(int(h.id) % 100 == 7 for h in result.hits)
    candidates = np.arange(7, 20000, 100)
    truth = candidates[np.argsort(np.linalg.norm(vectors[candidates] - q, axis=1))[:10]]
    assert len({int(h.id) for h in result.hits} & set(truth)) >= 9


def test_fewer_matches_than_k_is_reported_not_hidden(filtered_index):
    engine, idx, vectors = filtered_index
    result = idx.search_vector(vectors[0], 10, filter=AnyEq("labels", "eq", "rare"))
    assert sorted(h.id for h in result.hits) == ["17", "4711", "9999"]
    assert (result.complete, result.reason, result.matching) == (False, "fewer_matches", 3)


def test_knobs_a_standalone_search_leaves_on_its_connection_never_decide_the_next(filtered_index):
    """Standalone searches set pgvector's knobs at session level, only where they change (one round trip in the
    steady state): a filtered search's iterative scan must be off again for the next unfiltered one, and an exact
    search must not leave index scans off for whatever else the pooled connection runs."""
    engine, idx, vectors = filtered_index
    q = vectors[5]
    with idx.db.connection() as conn:
        def show(name: str) -> str:
            value = conn.execute(f"SHOW {name}").fetchone()[0]
            conn.commit()  # as a search leaves it: idle
            return value

        filtered = DocumentTable(idx.spec).search(conn, "v", q, 10, filter=Compare("category", "eq", 7))
        assert len(filtered.hits) == 10 and show("hnsw.iterative_scan") == "relaxed_order"
        plain = DocumentTable(idx.spec).search(conn, "v", q, 10)
        assert show("hnsw.iterative_scan") == "off" and plain.hits[0].id == "5"
        DocumentTable(idx.spec).search(conn, "v", q, 10, options=QueryOptions(exact=True))
        assert show("enable_indexscan") == "on"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not conn.autocommit
        DocumentTable(idx.spec).search(conn, "v", q, 10, options=QueryOptions(ef_search=77))
        assert show("hnsw.ef_search") == "77"


def test_a_filter_passing_very_few_rows_is_searched_exactly(filtered_index):
    """An iterative scan walks far through the graph to meet a 0.015 % filter's rows; the planner's estimate sends
    such a filter to an exact search, while a 1 % filter keeps the ANN index."""
    engine, idx, vectors = filtered_index
    with idx.db.connection() as conn:
        conn.execute(f'ANALYZE "{idx.spec.table_name}"')  # what autovacuum does after a load
    rare, one_percent = AnyEq("labels", "eq", "rare"), Compare("category", "eq", 7)
    assert "hnsw" not in idx.explain(vector=vectors[0], filter=rare).lower()
    assert "hnsw" in idx.explain(vector=vectors[0], filter=one_percent).lower()
    q = vectors[17] + 0.01
    assert [h.id for h in idx.search_vector(q, 2, filter=rare).hits] == ["17", sorted(
        ["4711", "9999"], key=lambda i: np.linalg.norm(vectors[int(i)] - q))[0]]


def test_a_tiny_scan_limit_is_reported(filtered_index):
    engine, idx, vectors = filtered_index
    result = idx.search_vector(vectors[0], 10, filter=Compare("category", "eq", 3),
                               options=QueryOptions(max_scan_tuples=50, ef_search=10))
    assert not result.complete and result.reason == "scan_limit" and result.matching == 10


@pytest.mark.parametrize("algorithm, params", [("hnsw", {"m": 6, "ef_construction": 12}), ("ivfflat", {"lists": 50})])
def test_tune_reaches_the_target_and_later_searches_use_it(engine, index_name, algorithm, params):
    if algorithm == "hnsw":
        data = clustered(6000, 48, 300, seed=5)
        data += np.random.default_rng(9).normal(size=data.shape).astype(np.float32) * 1.5  # make neighbours hard
    else:  # no cluster structure, so one list of 50 cannot hold a query's neighbours
        data = np.random.default_rng(5).normal(size=(6000, 48)).astype(np.float32)
    idx = engine.create_index(index_name, [VectorField("v", 48, metric="l2", algorithm=algorithm, params=params)])
    idx.add_vectors([str(i) for i in range(len(data))], data)
    if algorithm == "ivfflat":
        idx.build()
    first = QueryOptions(ef_search=10) if algorithm == "hnsw" else QueryOptions(probes=1)
    low = idx.evaluate(k=10, sample=60, options=first)
    assert low.recall < 0.95, "the data should be hard enough that the cheapest setting misses the target"
    report = idx.tune(0.95, k=10, sample=60)
    tuned = report["tuned"]
    assert tuned["reached"] and tuned["recall"] >= 0.95
    knob = "ef_search" if algorithm == "hnsw" else "probes"
    assert report["tried"][-1]["settings"][knob] == tuned[knob]
    assert all(t["recall"] < 0.95 for t in report["tried"][:-1])  # the smallest setting that reaches it
    reopened = engine.index(index_name)
    assert reopened.spec.tuned("v")[knob] == tuned[knob]
    assert reopened.evaluate(k=10, sample=60).recall >= 0.95  # default options now use the tuned value


def test_a_search_runs_with_the_settings_its_own_snapshot_sees(engine, index_name):
    """The index's settings (tuned ef_search, the bulk-load mark) are read in the search's snapshot, not taken from
    when the Index object was opened: an Index opened before a bulk load began reports the load, and one opened
    during it stops reporting it once it is over."""
    before = engine.create_index(index_name, [VectorField("v", 4)])
    before.add_vectors(["a", "b"], np.eye(2, 4, dtype=np.float32))
    query = SearchRequest(vector=np.ones(4, np.float32), field="v", top=1)
    assert before.query(query).building is None
    update_settings(engine.db, index_name, {"bulk_load": {"started_at": "2024-01-01T00:00:00+00:00", "rows": 2}})
    during = engine.index(index_name)
    assert "bulk_load" not in before.spec.settings and during.spec.settings["bulk_load"]
    assert before.query(query).building == {"phase": "loading rows"}
    update_settings(engine.db, index_name, {"bulk_load": None})
    assert during.query(query).building is None


def test_select_keeps_only_the_chosen_fields_of_searched_and_listed_documents(engine, index_name):
    idx = engine.create_index(index_name, [VectorField("v", 4)], [Field("lang", "string"), Field("n", "int")])
    idx.add_vectors(["a", "b"], np.eye(2, 4, dtype=np.float32), [{"lang": "en", "n": 1}, {"lang": "de", "n": 2}])
    found = idx.query(SearchRequest(vector=np.eye(4, dtype=np.float32)[1], field="v", top=1, select=["lang"]))
    assert [(h.id, h.document) for h in found] == [("b", {"lang": "de"})]
    listed = idx.query(SearchRequest(top=5, select=["n", "id"]))
    assert sorted((h.id, h.document) for h in listed) == [("a", {"n": 1}), ("b", {"n": 2})]
    with pytest.raises(ValueError, match="has no field 'colour'"):
        idx.query(SearchRequest(top=5, select=["colour"]))


def test_an_unreachable_target_is_reported_not_hidden(engine, index_name):
    # Big enough that the planner keeps the (poor, m=4) HNSW index even at ef_search 1000 instead of a full scan.
    data = clustered(30000, 48, 1500, seed=5)
    data += np.random.default_rng(9).normal(size=data.shape).astype(np.float32) * 1.5
    idx = engine.create_index(index_name, [VectorField("v", 48, metric="l2", params={"m": 4, "ef_construction": 8})])
    idx.drop_ann_indexes()  # bulk load first, then one build: the fast way to fill an HNSW index
    idx.add_vectors([str(i) for i in range(len(data))], data)
    idx.build()
    report = idx.tune(0.99, k=10, sample=20)
    tuned = report["tuned"]
    assert not tuned["reached"] and tuned["recall"] < 0.99 and tuned["ef_search"] == 1000
    assert all(t["index_used"] for t in report["tried"])


def test_evaluate_says_when_the_planner_prefers_an_exact_scan(engine, index_name):
    data = clustered(6000, 48, 300, seed=5)
    idx = engine.create_index(index_name, [VectorField("v", 48, metric="l2", params={"m": 4, "ef_construction": 8})])
    idx.add_vectors([str(i) for i in range(len(data))], data)
    assert idx.evaluate(k=10, sample=5, options=QueryOptions(ef_search=40)).index_used
    assert not idx.evaluate(k=10, sample=5, options=QueryOptions(ef_search=1000)).index_used


def test_ivfflat_refuses_to_build_empty_and_searches_exactly_until_built(engine, index_name, data):
    idx = engine.create_index(index_name, [VectorField("v", DIMS, metric="l2", algorithm="ivfflat")])
    with pytest.raises(SchemaError, match="empty.*centroids|centroids.*empty|table is empty"):
        idx.build()
    idx.add_vectors([str(i) for i in range(500)], data[:500])
    assert [int(h.id) for h in idx.search_vector(data[3], 5)] == exact_top_k(data[:500], data[3], "l2", 5)
    assert idx.stats()["vector_fields"]["v"]["ann_index"] is None
    idx.build()
    assert idx.stats()["vector_fields"]["v"]["ann_index_bytes"] > 0


def test_add_get_remove_and_stats(engine, index_name, data):
    idx = engine.create_index(
        index_name,
        [VectorField("v", DIMS), VectorField("h", DIMS, storage="halfvec", metric="l2")],
        [Field("title", "string", filterable=True)],
    )
    ids = [f"doc-{i}" for i in range(100)]
    idx.add_vectors(ids, {"v": data[:100], "h": data[100:200]}, [{"title": f"t{i}"} for i in range(100)])
    got = idx.get(["doc-5", "nope"])
    assert list(got) == ["doc-5"] and got["doc-5"]["title"] == "t5"
    np.testing.assert_allclose(got["doc-5"]["v"], data[5], rtol=1e-6)
    np.testing.assert_allclose(got["doc-5"]["h"], data[105], rtol=1e-3)  # float16 storage
    assert idx.remove(["doc-5", "doc-6", "nope"]) == 2
    stats = idx.stats()
    assert stats["rows"] == 98 and stats["table_bytes"] > 0
    assert stats["vector_fields"]["v"]["ann_index_bytes"] > 0 and stats["vector_fields"]["h"]["dims"] == DIMS
    with pytest.raises(ValueError, match=r"shape \(2, 32\)"):
        idx.add_vectors(["a", "b"], {"v": data[:2, :5], "h": data[:2]})
    with pytest.raises(SchemaError, match="unknown field"):
        idx.add_vectors(["a"], {"v": data[:1], "h": data[:1]}, [{"colour": "red"}])
    with pytest.raises(ValueError, match="NaN"):
        idx.add_vectors(["a"], {"v": np.full((1, DIMS), np.nan), "h": data[:1]})
    assert idx.count() == 98


def test_halfvec_index_is_smaller_than_vector(engine, index_name, data):
    full = engine.create_index(index_name, [VectorField("v", DIMS)])
    half = engine.create_index(index_name + "h", [VectorField("v", DIMS, storage="halfvec")])
    big = np.tile(data, (2, 1))
    for idx in (full, half):
        idx.add_vectors([str(i) for i in range(len(big))], big)
    assert half.stats()["vector_fields"]["v"]["ann_index_bytes"] < full.stats()["vector_fields"]["v"]["ann_index_bytes"]


def test_create_list_rename_delete(engine, index_name):
    idx = engine.create_index(index_name, [VectorField("v", 4)])
    idx.add_vectors(["a"], np.ones((1, 4)))
    with pytest.raises(IndexExistsError):
        engine.create_index(index_name, [VectorField("v", 4)])
    assert index_name in [s.name for s in engine.list_indexes()]
    renamed = engine.rename_index(index_name, index_name + "-new")
    assert renamed.count() == 1 and renamed.search_vector(np.ones(4), 1)[0].id == "a"
    with pytest.raises(IndexNotFoundError):
        engine.index(index_name)
    engine.delete_index(index_name + "-new")
    with engine.db.connection() as conn:
        gone = conn.execute("SELECT to_regclass(%s)", (renamed.spec.table_name,)).fetchone()[0]
    assert gone is None
    assert index_name + "-new" not in [s.name for s in engine.list_indexes()]


def _index_suffixes(engine, table: str) -> set[str]:
    with engine.db.connection() as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,)).fetchall()
    return {name[len(table):] for (name,) in rows}


def test_renamed_index_takes_its_table_indexes_along(engine, index_name):
    """A photo index renamed, then a new one under the old name: both have every index (keyword, listing, ANN)."""
    first = engine.create_photo_index(index_name)
    suffixes = _index_suffixes(engine, first.spec.table_name)
    assert {"_pkey", "_browse", "_search_text_gin", "_image_hnsw", "_semantic_hnsw"} <= suffixes
    renamed = engine.rename_index(index_name, index_name + "-old")
    second = engine.create_photo_index(index_name)
    assert _index_suffixes(engine, renamed.spec.table_name) == suffixes
    assert _index_suffixes(engine, second.spec.table_name) == suffixes
    for name in (index_name, index_name + "-old"):
        engine.delete_index(name)


def test_listing_pages_read_the_browse_index(engine, index_name):
    """"Recent photos" is served by the photo table's b-tree index, not by sorting the table."""
    idx = engine.create_photo_index(index_name)
    sql_text = DocumentTable(idx.spec).browse_sql([("taken_at", True)])
    with engine.db.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_sort = off")
        plan = "\n".join(r[0] for r in conn.execute(b"EXPLAIN " + sql_text.as_bytes(conn), {"limit": 24, "offset": 0}))
    engine.delete_index(index_name)
    assert idx.spec.table_name + "_browse" in plan and "Sort" not in plan, plan


@pytest.mark.parametrize(
    "field, message",
    [
        (VectorField("v", 8, algorithm="ivfflat", metric="l1"), "ivfflat cannot index vector with l1"),
        (VectorField("v", 8, metric="hamming"), "use storage 'bit'"),
        (VectorField("v", 8, storage="bit", metric="cosine"), "hamming or jaccard"),
        (VectorField("v", 3000), "up to 2000 dimensions"),
        (VectorField("v", 8, params={"m": 1}), "m must be"),
        (VectorField("v", 8, params={"lists": 5}), "unknown parameter|lists"),
        (VectorField("Bad Name", 8), "invalid vector field name"),
    ],
)
def test_invalid_definitions_explain_what_would_work(engine, index_name, field, message):
    with pytest.raises(SchemaError, match=message):
        engine.create_index(index_name, [field])


def test_a_wrong_dimension_query_is_a_clear_error(engine, index_name):
    idx = engine.create_index(index_name, [VectorField("v", 4)])
    with pytest.raises(ValueError, match="4 dimensions, the query vector has 3"):
        idx.search_vector(np.ones(3), 1)
    with pytest.raises(psycopg.Error):  # not silently ignored
        with engine.db.connection() as conn:
            conn.execute("SELECT '[1,2,3]'::vector(4)")

"""kNN over an index's vector fields: the statements with the ANN settings they depend on, exact search for very
selective filters, EXPLAIN, near pairs (duplicates), and streaming or sampling the stored vectors.

Who owns the transaction is said, never guessed: `in_snapshot=True` when the caller runs the statement inside its
read snapshot (Reader), False on an idle pooled connection of its own (IndexStore's single-statement reads).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Iterator

import numpy as np
import psycopg
from psycopg import sql

from pixsearch.store.filters import Filter, compile_filter
from pixsearch.store.results import Hit, QueryOptions, SearchResult, as_query_vector, similarity
from pixsearch.store.schema import OPERATORS, IndexSpec, VectorField, default_probes
from pixsearch.store.session import set_local, set_session
from pixsearch.store.shape import TableShape, operator, where_clause

DEFAULT_EF_SEARCH = 40
MAX_EF_SEARCH = 1000
DEFAULT_MAX_SCAN_TUPLES = 20000
# A filter the planner expects to pass at most this share of the rows is searched exactly: an iterative index scan
# has to walk far through the graph to meet so few rows. bench/scale.py at 1M rows: at 0.1 % the iterative scan
# found 0.68 of the true top 10 in 159 ms and a scan of the table all of them in 150 ms; at 1 % the iterative scan
# is the better plan (recall 0.93 in 28 ms against 132 ms).
EXACT_BELOW_SHARE = 0.002
ROW_ESTIMATE_SQL = sql.SQL("SELECT reltuples FROM pg_class WHERE oid = %s::regclass")
SAMPLE_SEED_SQL = sql.SQL("SELECT setseed(%s)")
EXPORT_CURSOR = "pixsearch_export"
CITUS_EXPLAIN_SETTINGS = {"citus.explain_all_tasks": "on"}  # EXPLAIN shows every shard's plan


# -- statements ---------------------------------------------------------------------------------------------------
def knn_sql(shape: TableShape, vf: VectorField, where: sql.Composable | None, *, exact: bool = False) -> sql.Composed:
    """The kNN query (parameters: q, k, candidates and the filter's). Its ORDER BY uses the operator of the index's
    operator class so the index serves it.

    Filtered queries run with relaxed-order iterative scans, so their candidates are re-sorted by distance in an
    outer query (the MATERIALIZED CTE keeps the planner from merging the two).
    Fields with an `oversample` parameter take k * oversample candidates in index order and re-rank them by the
    exact distance: bit (binary-quantised) fields rank candidates by hamming/jaccard on the bits and re-rank by
    the exact metric on the stored float vectors; halfvec fields re-rank away the float16 rounding of the index.
    """
    q = sql.Placeholder("q")
    column = sql.Identifier(vf.name)
    cols = sql.SQL(", ").join([shape.key] + [sql.Identifier(c) for c in shape.retrievable])
    op = operator(OPERATORS[vf.exact_metric])
    if vf.params.get("oversample") and not exact:
        order = sql.SQL("{} {} {}").format(
            shape.indexed_expression(vf), operator(vf.operator), shape.indexed_expression(vf, q))
        return sql.SQL(
            "WITH candidates AS MATERIALIZED (SELECT {cols}, {col} AS pixsearch_rerank FROM {t}{where} "
            "ORDER BY {order} LIMIT %(candidates)s) "
            "SELECT {cols}, pixsearch_rerank {op} {q} AS distance FROM candidates ORDER BY distance LIMIT %(k)s"
        ).format(cols=cols, col=column, t=shape.table, where=where_clause(where), order=order, op=op, q=q)
    inner = sql.SQL("SELECT {cols}, {col} {op} {q} AS distance FROM {t}{where} ORDER BY {col} {op} {q} LIMIT %(k)s")
    inner = inner.format(cols=cols, col=column, op=op, q=q, t=shape.table, where=where_clause(where))
    if where is None:
        return inner
    return sql.SQL("WITH hits AS MATERIALIZED ({}) SELECT * FROM hits ORDER BY distance").format(inner)


def query_settings(spec: IndexSpec, vf: VectorField, k: int, filtered: bool, options: QueryOptions) -> dict[str, Any]:
    """Every ANN knob this query depends on, on or off: one search runs several kNN statements in one
    transaction, and a knob left from an earlier one (an exact list, a filtered list) must not leak into the
    next. enable_indexscan is off only for exact queries (which always run in a transaction of their own)."""
    if options.exact:
        return {"enable_indexscan": "off"}
    settings: dict[str, Any] = {}
    tuned = spec.tuned(vf.name)
    iterative = filtered and options.iterative
    if vf.algorithm == "hnsw":
        ef = options.ef_search or tuned.get("ef_search") or DEFAULT_EF_SEARCH
        settings["hnsw.ef_search"] = min(MAX_EF_SEARCH, max(ef, k * vf.params.get("oversample", 1)))
        settings["hnsw.iterative_scan"] = "relaxed_order" if iterative else "off"
        if iterative:
            settings["hnsw.max_scan_tuples"] = options.max_scan_tuples or DEFAULT_MAX_SCAN_TUPLES
    elif vf.algorithm == "ivfflat":
        lists = spec.settings.get("built", {}).get(vf.name, {}).get("lists") or 1
        settings["ivfflat.probes"] = options.probes or tuned.get("probes") or default_probes(lists)
        settings["ivfflat.iterative_scan"] = "relaxed_order" if iterative else "off"
        if iterative:
            settings["ivfflat.max_probes"] = lists
    return settings


def local_settings(spec: IndexSpec, vf: VectorField, k: int, filtered: bool, options: QueryOptions) -> dict[str, Any]:
    """What a kNN statement inside a transaction SETs LOCAL: its knobs, and enable_indexscan back on unless exact."""
    return {"enable_indexscan": "on", **query_settings(spec, vf, k, filtered, options)}


def count_matching_sql(shape: TableShape, vf: VectorField, where: sql.Composable | None) -> sql.Composed:
    """How many rows (up to %(limit)s) have this vector and pass the filter: why a search came back short."""
    condition = sql.SQL("{} IS NOT NULL").format(sql.Identifier(vf.name))
    if where is not None:
        condition = sql.SQL("{} AND {}").format(condition, where)
    return sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT %(limit)s) AS matching").format(
        shape.table, condition)


def filter_estimate_sql(shape: TableShape, where: sql.Composable) -> sql.Composed:
    """The planner's estimate of the rows passing a filter (its plan's top row count)."""
    return sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(shape.table, where)


def near_pairs_sql(shape: TableShape, vf: VectorField) -> sql.Composed:
    """Each row's %(k)s nearest neighbours within %(max)s (a lateral kNN per row through the ANN index), each pair
    once."""
    return sql.SQL(
        "SELECT a.{key}, n.{key}, n.distance FROM {t} a CROSS JOIN LATERAL ("
        "SELECT b.{key}, b.{col} {op} a.{col} AS distance FROM {t} b WHERE b.{col} IS NOT NULL "
        "ORDER BY b.{col} {op} a.{col} LIMIT %(k)s) n "
        "WHERE a.{col} IS NOT NULL AND n.{key} > a.{key} AND n.distance <= %(max)s"
    ).format(key=shape.key, t=shape.table, col=sql.Identifier(vf.name), op=operator(OPERATORS[vf.exact_metric]))


def vectors_sql(shape: TableShape, vf: VectorField) -> sql.Composed:
    """Every (key, vector) of one field in key order."""
    return sql.SQL("SELECT {}, {} FROM {} WHERE {} IS NOT NULL ORDER BY {}").format(
        shape.key, sql.Identifier(vf.name), shape.table, sql.Identifier(vf.name), shape.key)


def sample_vectors_sql(shape: TableShape, vf: VectorField) -> sql.Composed:
    """%s stored (key, vector) pairs in the order of random() (after setseed: repeatable)."""
    return sql.SQL("SELECT {}, {} FROM {} WHERE {} IS NOT NULL ORDER BY random() LIMIT %s").format(
        shape.key, sql.Identifier(vf.name), shape.table, sql.Identifier(vf.name))


# -- execution ----------------------------------------------------------------------------------------------------
class VectorQueries:
    def __init__(self, shape: TableShape):
        self.shape = shape

    def search(self, conn: psycopg.Connection, field_name: str | None, vector: Any, k: int, *,
               filter: Filter | None = None, options: QueryOptions = QueryOptions(), count_if_short: bool = True,
               in_snapshot: bool) -> SearchResult:
        """The k nearest rows. When fewer come back, the result says why (count_if_short: count what matches)."""
        vf = self.shape.spec.vector_field(field_name)
        where, params = compile_filter(self.shape.spec, filter)
        options = self._exact_if_selective(conn, where, params, options, in_snapshot=in_snapshot)
        query_params = self._params(vf, params, vector, k)
        rows = self._run(conn, vf, where, query_params, k, options, in_snapshot=in_snapshot).fetchall()
        result = SearchResult(hits=self._hits(vf, rows), k=k)
        if len(result.hits) < k and count_if_short:
            matching = conn.execute(count_matching_sql(self.shape, vf, where), {**params, "limit": k}).fetchone()[0]
            result.complete = False
            result.matching = matching
            result.reason = "scan_limit" if matching > len(result.hits) else "fewer_matches"
        return result

    def explain(self, conn: psycopg.Connection, field_name: str | None, vector: Any, k: int, *,
                filter: Filter | None = None, options: QueryOptions = QueryOptions(), analyze: bool = False) -> str:
        """The plan of search()'s kNN statement, in a transaction of its own (its settings end with it)."""
        vf = self.shape.spec.vector_field(field_name)
        where, params = compile_filter(self.shape.spec, filter)
        prefix = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN ")
        with conn.transaction():
            options = self._exact_if_selective(conn, where, params, options, in_snapshot=True)
            statement = prefix + knn_sql(self.shape, vf, where, exact=options.exact)
            set_local(conn, local_settings(self.shape.spec, vf, k, where is not None, options),
                      propagate=self.shape.distributed)
            cursor: psycopg.Cursor = conn.cursor()
            if self.shape.distributed:
                # Citus cannot fetch the workers' plans of a statement with bind parameters ("Could not get remote
                # plan"): the values are bound on the client for EXPLAIN, and every shard's plan is shown.
                set_local(conn, CITUS_EXPLAIN_SETTINGS)
                cursor = psycopg.ClientCursor(conn)
            rows = cursor.execute(statement, self._params(vf, params, vector, k)).fetchall()
        return "\n".join(row[0] for row in rows)

    def near_pairs(self, conn: psycopg.Connection, field_name: str, max_distance: float, k: int = 10
                   ) -> list[tuple[str, str, float]]:
        """(key, key, distance) of pairs within `max_distance` of each other, found through the ANN index: each
        row's k nearest neighbours (a lateral kNN per row, not all pairs), each pair once. In a transaction of its
        own."""
        vf = self.shape.spec.vector_field(field_name)
        with conn.transaction():
            if self.shape.distributed:  # Citus cannot plan a lateral join on a non-distribution column
                return self._near_pairs_row_by_row(conn, vf, max_distance, k)
            set_local(conn, local_settings(self.shape.spec, vf, k + 1, False, QueryOptions()))
            rows = conn.execute(near_pairs_sql(self.shape, vf), {"k": k + 1, "max": max_distance})
            return [(a, b, float(d)) for a, b, d in rows]

    def _near_pairs_row_by_row(self, conn: psycopg.Connection, vf: VectorField, max_distance: float, k: int
                               ) -> list[tuple[str, str, float]]:
        """One kNN query per row, inside the caller's transaction."""
        pairs = []
        for keys, block in self.iter_vectors(conn, vf.name):
            for key, vector in zip(keys, block):
                for hit in self.search(conn, vf.name, vector, k + 1, in_snapshot=True).hits:
                    if hit.id > key and hit.distance <= max_distance:
                        pairs.append((key, hit.id, hit.distance))
        return pairs

    def iter_vectors(self, conn: psycopg.Connection, field_name: str, batch: int = 10_000
                     ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every (key, vector) of one field in key order, in chunks, through a server-side binary cursor: an export
        streams without holding the index in memory twice."""
        vf = self.shape.spec.vector_field(field_name)
        with conn.cursor(name=EXPORT_CURSOR, binary=True) as cur:
            cur.itersize = batch
            cur.execute(vectors_sql(self.shape, vf))
            while rows := cur.fetchmany(batch):
                yield [r[0] for r in rows], np.stack([np.asarray(r[1].to_numpy(), dtype=np.float32) for r in rows])

    def sample_vectors(self, conn: psycopg.Connection, vf: VectorField, n: int, seed: float = 0.42) -> list[tuple]:
        """n stored (key, vector) pairs, pseudo-randomly but repeatably chosen."""
        conn.execute(SAMPLE_SEED_SQL, (seed,))
        return conn.execute(sample_vectors_sql(self.shape, vf), (n,)).fetchall()

    # -- the pieces of search ------------------------------------------------------------------------------------
    def _params(self, vf: VectorField, params: dict, vector: Any, k: int) -> dict[str, Any]:
        return {**params, "q": as_query_vector(vector, vf), "k": k, "candidates": k * vf.params.get("oversample", 1)}

    def _hits(self, vf: VectorField, rows: list[tuple]) -> list[Hit]:
        names = [self.shape.spec.key_field] + self.shape.retrievable
        return [Hit(row[0], similarity(vf.exact_metric, float(row[-1]), vf.dims), float(row[-1]),
                    dict(zip(names[1:], row[1:-1])))
                for row in rows if row[-1] is not None]

    def _run(self, conn: psycopg.Connection, vf: VectorField, where: sql.Composable | None, params: dict, k: int,
             options: QueryOptions, *, in_snapshot: bool) -> psycopg.Cursor:
        """Run the kNN statement with the settings it depends on.

        Inside a snapshot the settings are simply set again for each statement (all of them, every time). On its own
        on one node: the settings at session level where they changed, then the statement in autocommit — one round
        trip in the steady state (set_session). Otherwise (exact, Citus, whose workers see only SET LOCAL) the
        statement gets a transaction of its own, so that its settings end with it."""
        statement = knn_sql(self.shape, vf, where, exact=options.exact)
        filtered = where is not None
        if not in_snapshot and not (options.exact or self.shape.distributed):
            conn.autocommit = True
            try:
                set_session(conn, query_settings(self.shape.spec, vf, k, filtered, options))
                return conn.execute(statement, params)
            finally:
                conn.autocommit = False
        with nullcontext() if in_snapshot else conn.transaction():
            set_local(conn, local_settings(self.shape.spec, vf, k, filtered, options), propagate=self.shape.distributed)
            return conn.execute(statement, params)

    def _exact_if_selective(self, conn: psycopg.Connection, where: sql.Composable | None, params: dict,
                            options: QueryOptions, *, in_snapshot: bool) -> QueryOptions:
        """Exact search for a filter that passes at most EXACT_BELOW_SHARE of the rows, by the planner's estimate
        from the table's statistics (a table never analysed, or a distributed one, whose statistics live on the
        workers, keeps the index). A standalone search leaves no transaction open."""
        if where is None or options.exact or not options.iterative or self.shape.distributed:
            return options
        with nullcontext() if in_snapshot else conn.transaction():
            total = conn.execute(ROW_ESTIMATE_SQL, (self.shape.table.as_string(conn),)).fetchone()[0]
            if total is None or total <= 0:
                return options
            plan = conn.execute(filter_estimate_sql(self.shape, where), params).fetchone()[0]
        passing = plan[0]["Plan"]["Plan Rows"]
        return replace(options, exact=True) if passing <= EXACT_BELOW_SHARE * total else options

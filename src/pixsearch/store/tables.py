"""One index's table: DDL, ANN index builds, COPY BINARY upserts, gets/deletes, kNN search, EXPLAIN and sizes."""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from datetime import datetime
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import psycopg
from pgvector import HalfVector, Vector
from psycopg import sql

from pixsearch.config import available_cores
from pixsearch.db import Database
from pixsearch.store.filters import Filter, compile_filter
from pixsearch.store.schema import (
    BROWSE_ORDER,
    LOOKUP_COLUMNS,
    OPERATORS,
    Field,
    IndexSpec,
    SchemaError,
    VectorField,
    default_lists,
    default_probes,
)

DEFAULT_EF_SEARCH = 40
SEARCH_TEXT = "search_text"  # the tsvector column keyword search reads, maintained on every write


def keyword_column(f: Field) -> str:
    """The tsvector column of a field with a keyword list of its own."""
    return f"{f.name}_tsv"
MAX_EF_SEARCH = 1000
DEFAULT_MAX_SCAN_TUPLES = 20000
# A filter the planner expects to pass at most this share of the rows is searched exactly: an iterative index scan
# has to walk far through the graph to meet so few rows. bench/scale.py at 1M rows: at 0.1 % the iterative scan
# found 0.68 of the true top 10 in 159 ms and a scan of the table all of them in 150 ms; at 1 % the iterative scan
# is the better plan (recall 0.93 in 28 ms against 132 ms).
EXACT_BELOW_SHARE = 0.002
MB = 1024 * 1024


@dataclass
class Hit:
    """One search result: the key, a similarity score (higher is better), the raw distance, the stored fields."""

    id: str
    score: float
    distance: float
    document: dict[str, Any] = field(default_factory=dict)
    subscores: dict[str, dict[str, float]] | None = None  # hybrid: per list {"rank", "score"}
    region: dict[str, Any] | None = None  # region searches: {"id", "box": [x0, y0, x1, y1], "label", "score"}

    @property
    def path(self) -> str | None:
        return self.document.get("path")

    @property
    def tags(self) -> list[str]:
        return list(self.document.get("tags") or [])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "score": self.score, "distance": self.distance}
        for key, value in self.document.items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        if self.subscores is not None:
            out["subscores"] = self.subscores
        if self.region is not None:
            out["region"] = self.region
        if out["distance"] != out["distance"]:  # NaN: a keyword-only hit has no vector distance
            out["distance"] = None
        return out


class HitList:
    """Lets a result be used as its list of hits: iterate, index, len()."""

    hits: list[Hit]

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i):
        return self.hits[i]


@dataclass
class SearchResult(HitList):
    """Hits plus whether all k were found; when not, why: only `matching` rows pass the filter, or the
    iterative index scan stopped at its limit (hnsw.max_scan_tuples / ivfflat.max_probes) before finding k."""

    hits: list[Hit]
    k: int
    complete: bool = True
    reason: str | None = None  # None | "fewer_matches" | "scan_limit"
    matching: int | None = None


@dataclass(frozen=True)
class QueryOptions:
    """Per-query ANN knobs; None means the index's tuned value, else pgvector-advised defaults."""

    ef_search: int | None = None
    probes: int | None = None
    max_scan_tuples: int | None = None
    iterative: bool = True
    exact: bool = False


def similarity(metric: str, distance: float, dims: int) -> float:
    """pgvector distance -> similarity where higher is better."""
    if metric == "cosine":
        return 1.0 - distance
    if metric == "ip":
        return -distance  # <#> is the negative inner product
    if metric == "hamming":
        return 1.0 - distance / dims
    if metric == "jaccard":
        return 1.0 - distance
    return 1.0 / (1.0 + distance)  # l2, l1


def _operator(symbol: str) -> sql.SQL:
    # Jaccard's <%> holds a '%', which psycopg would read as a placeholder unless doubled.
    return sql.SQL(symbol.replace("%", "%%"))


def as_query_vector(vector: Any, vf: VectorField) -> Vector | HalfVector:
    return _pg_vector(
        vector,
        vf,
        lambda got: f"vector field {vf.name!r} has {vf.dims} dimensions, the query vector has {got}",
        "the query vector contains NaN or infinite values",
    )


def _pg_vector(value: Any, vf: VectorField, wrong_dims: Callable[[int], str], not_finite: str):
    """float32 array checked against the field (width, finiteness) as the column's pgvector type."""
    array = np.asarray(value, dtype=np.float32).reshape(-1)
    if array.shape[0] != vf.dims:
        raise ValueError(wrong_dims(array.shape[0]))
    if not np.all(np.isfinite(array)):
        raise ValueError(not_finite)
    return HalfVector(array) if vf.column_type == "halfvec" else Vector(array)


def set_local(conn: psycopg.Connection, settings: dict[str, Any], *, propagate: bool = False) -> None:
    """Set each setting for the current transaction only, in one round trip. propagate: the statement that follows
    runs on Citus workers too (a distributed table), which see SET LOCAL — not set_config() — only after
    `SET LOCAL citus.propagate_set_commands = 'local'` in the same transaction."""
    if not settings:
        return
    if not propagate:
        # One parameterised statement: psycopg prepares it after a few uses, so it costs one cheap round trip.
        names = list(settings)
        calls = sql.SQL(", ").join(sql.SQL("set_config({}, {}, true)").format(sql.Placeholder(), sql.Placeholder())
                                   for _ in names)
        conn.execute(sql.SQL("SELECT {}").format(calls), [v for n in names for v in (n, str(settings[n]))])
        return
    statements = [sql.SQL("SET LOCAL citus.propagate_set_commands = 'local'")]
    statements += [sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(str(value)))
                   for name, value in settings.items()]
    conn.execute(sql.SQL("; ").join(statements))


# The ANN knobs each pooled connection was last given at session level (see set_session).
_SESSION_KNOBS: "weakref.WeakKeyDictionary[psycopg.Connection, dict[str, str]]" = weakref.WeakKeyDictionary()
_SESSION_KNOB_PREFIXES = ("hnsw.", "ivfflat.")


def set_session(conn: psycopg.Connection, settings: dict[str, Any]) -> None:
    """Session-level ANN settings on an idle connection, sent only where they differ from what this connection was
    last given: a standalone kNN query with the usual settings is then its one statement, not BEGIN + settings +
    query + COMMIT. Only pgvector's knobs are set this way. Every kNN statement sets all the ones it depends on, so a
    value left on the connection never decides another query, and nothing else reads them."""
    assert all(name.startswith(_SESSION_KNOB_PREFIXES) for name in settings), settings
    known = _SESSION_KNOBS.setdefault(conn, {})
    changed = {name: str(value) for name, value in settings.items() if known.get(name) != str(value)}
    if not changed:
        return
    calls = sql.SQL(", ").join(sql.SQL("set_config({}, {}, false)").format(sql.Placeholder(), sql.Placeholder())
                               for _ in changed)
    conn.execute(sql.SQL("SELECT {}").format(calls), [v for item in changed.items() for v in item])
    known.update(changed)


def parallel_workers() -> int:
    """Workers besides the leader for one index build: pgvector builds HNSW in parallel; leave one core free."""
    return available_cores() - 1


@contextmanager
def read_snapshot(db: Database) -> Iterator[psycopg.Connection]:
    """One connection and one REPEATABLE READ, READ ONLY transaction: every statement of a search (its ranked
    lists, documents, facets, counts) sees the same data, and a search never holds more than one pool connection.
    The isolation level goes with BEGIN itself (no separate round trip) and is reset before the connection
    returns to the pool."""
    with db.connection() as conn:
        conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
        try:
            with conn.transaction():
                yield conn
        finally:
            conn.isolation_level, conn.read_only = None, None


class DocumentTable:
    def __init__(self, spec: IndexSpec):
        self.spec = spec
        self.table = sql.Identifier(spec.table_name)
        self.key = sql.Identifier(spec.key_field)

    def conflict_target(self) -> sql.Composable:
        """The unique key an upsert matches on (a region table's is (photo key, region key))."""
        return self.key

    @property
    def distributed(self) -> bool:
        """Sharded across Citus workers (by its key): settings must be propagated, sizes summed over shards."""
        return bool(self.spec.settings.get("distribution"))

    # -- DDL ---------------------------------------------------------------------------------------------------------
    def create(self, conn: psycopg.Connection) -> None:
        columns = [sql.SQL("{} text PRIMARY KEY").format(self.key)]
        columns += [sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(f.sql_type)) for f in self.spec.fields]
        columns.append(sql.SQL("indexed_at timestamptz NOT NULL DEFAULT now()"))
        for column, _ in self.text_columns:
            columns.append(sql.SQL("{} tsvector").format(sql.Identifier(column)))
        for vf in self.spec.vector_fields:
            columns.append(
                sql.SQL("{} {}({})").format(sql.Identifier(vf.name), sql.SQL(vf.column_type), sql.Literal(vf.dims))
            )
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(self.table, sql.SQL(", ").join(columns)))
        self._create_keyword_indexes(conn)
        if self.spec.kind in BROWSE_ORDER:
            order = self._browse_order(BROWSE_ORDER[self.spec.kind])
            conn.execute(sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier(self.derived_name("browse")), self.table, sql.SQL(", ").join(order)))
        self.create_lookup_indexes(conn)
        for vf in self.spec.vector_fields:
            if vf.algorithm == "hnsw":  # IVFFlat needs data for its centroids: built by build_index later
                conn.execute(self._create_index_sql(vf, lists=None))

    def add_columns(self, conn: psycopg.Connection, fields: Sequence[Field], vector_fields: Sequence[VectorField]) -> None:
        """Add metadata and vector columns (a re-index adds the new model's); `self.spec` must already include them.
        ANN indexes of the new vector fields are built later, once they are filled (build_index)."""
        for f in fields:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                self.table, sql.Identifier(f.name), sql.SQL(f.sql_type)))
        for vf in vector_fields:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}({})").format(
                self.table, sql.Identifier(vf.name), sql.SQL(vf.column_type), sql.Literal(vf.dims)))
        for column, _ in self.text_columns:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} tsvector").format(
                self.table, sql.Identifier(column)))
        self._create_keyword_indexes(conn)

    def drop_columns(self, conn: psycopg.Connection, names: Sequence[str]) -> None:
        """Drop columns (and with them their indexes): the vector fields of a model an index no longer uses."""
        for name in names:
            conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(self.table, sql.Identifier(name)))

    def keys_missing(
        self, conn: psycopg.Connection, columns: Sequence[str], after: str | None, limit: int, extra: Sequence[str] = ()
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` rows (in key order, after key `after`) where any of `columns` is empty: what a re-index
        still has to embed. Returns (key, {extra column: value})."""
        missing = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in columns)
        statement = sql.SQL("SELECT {key}{extra} FROM {t} WHERE ({missing}){after} ORDER BY {key} LIMIT %(limit)s").format(
            key=self.key,
            extra=sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(c)) for c in extra),
            t=self.table,
            missing=missing,
            after=sql.SQL(" AND {} > %(after)s").format(self.key) if after is not None else sql.SQL(""),
        )
        rows = conn.execute(statement, {"after": after, "limit": limit}).fetchall()
        return [(row[0], dict(zip(extra, row[1:]))) for row in rows]

    def count_missing(self, conn: psycopg.Connection, columns: Sequence[str]) -> int:
        missing = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in columns)
        return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self.table, missing)).fetchone()[0]

    @property
    def searchable(self) -> list:
        return [f for f in self.spec.fields if f.searchable]

    @property
    def text_columns(self) -> list[tuple[str, list[Field]]]:
        """The tsvector columns keyword search reads, each with the fields it is made from: the general list's
        (every searchable field) and one per field with a keyword list of its own."""
        columns = [(SEARCH_TEXT, self.searchable)] if self.searchable else []
        return columns + [(keyword_column(f), [f]) for f in self.spec.fields if f.keyword_list]

    def _create_keyword_indexes(self, conn: psycopg.Connection) -> None:
        """GIN on the full-text columns; trigram GIN on searchable single strings (partial file names)."""
        for column, _ in self.text_columns:
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin ({})").format(
                    sql.Identifier(self.derived_name(column, "gin")), self.table, sql.Identifier(column)
                )
            )
        for f in self.searchable:
            if f.type == "string":
                conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin ({} gin_trgm_ops)").format(
                        sql.Identifier(self.derived_name(f.name, "trgm")), self.table, sql.Identifier(f.name)
                    )
                )

    def _document_text(self, source: sql.Composable, fields: Sequence[Field]) -> sql.Composable:
        """SQL for the text keyword search sees in `fields`: punctuation turned into spaces (file names like
        IMG_2034-beach.jpg become words), arrays joined."""
        parts = []
        for f in fields:
            column = sql.SQL("{}.{}").format(source, sql.Identifier(f.name))
            if f.type.endswith("[]"):
                column = sql.SQL("array_to_string({}, ' ')").format(column)
            parts.append(sql.SQL("regexp_replace(coalesce({}, ''), '[^[:alnum:]]+', ' ', 'g')").format(column))
        text = sql.SQL("unaccent(concat_ws(' ', {}))").format(sql.SQL(", ").join(parts))
        return sql.SQL("(to_tsvector('simple', {0}) || to_tsvector('english', {0}))").format(text)

    def derived_name(self, *parts: str) -> str:
        """The name of something belonging to the table (its indexes): `<table>_<parts>`, within PostgreSQL's
        63-byte identifier limit. Longer names would be cut silently, and two cut names could collide: those end in
        a hash of the full name instead."""
        return derived_identifier(self.spec.table_name, *parts)

    def derived_names(self) -> list[str]:
        """Every name derived_name gives this table's indexes (rename moves them all)."""
        names = [self.ann_index_name(vf) for vf in self.spec.vector_fields if vf.algorithm != "exact"]
        names += [self.derived_name(column, "gin") for column, _ in self.text_columns]
        names += [self.derived_name(f.name, "trgm") for f in self.searchable if f.type == "string"]
        if self.spec.kind in BROWSE_ORDER:
            names.append(self.derived_name("browse"))
        names += [self.derived_name(column) for column in LOOKUP_COLUMNS.get(self.spec.kind, ())]
        return names

    def create_lookup_indexes(self, conn: psycopg.Connection) -> None:
        """The b-trees of LOOKUP_COLUMNS (IF NOT EXISTS: tables made before they existed get them too)."""
        for column in LOOKUP_COLUMNS.get(self.spec.kind, ()):
            name = sql.Identifier(self.derived_name(column))
            exists = conn.execute("SELECT to_regclass(%s)", (name.as_string(conn),)).fetchone()[0] is not None
            if not exists and any(f.name == column for f in self.spec.fields):  # (CREATE waits on writers)
                conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    name, self.table, sql.Identifier(column)))

    def rows_where(self, conn: psycopg.Connection, column: str, value: Any, columns: Sequence[str]
                   ) -> list[dict[str, Any]]:
        """The rows whose `column` equals `value`, with their key and `columns`."""
        selected = sql.SQL(", ").join([self.key, *map(sql.Identifier, columns)])
        query = sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(selected, self.table, sql.Identifier(column))
        return [dict(zip([self.spec.key_field, *columns], row)) for row in conn.execute(query, (value,))]

    def rows_where_like(self, conn: psycopg.Connection, column: str, patterns: Sequence[str], columns: Sequence[str]
                        ) -> list[dict[str, Any]]:
        """The rows whose `column` matches any of the LIKE `patterns`, with their key and `columns`."""
        selected = sql.SQL(", ").join([self.key, *map(sql.Identifier, columns)])
        query = sql.SQL("SELECT {} FROM {} WHERE {} LIKE ANY(%s)").format(selected, self.table, sql.Identifier(column))
        return [dict(zip([self.spec.key_field, *columns], row)) for row in conn.execute(query, (list(patterns),))]

    def rekey(self, conn: psycopg.Connection, moves: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Give rows a new key with some columns replaced, keeping everything else (vectors included), in the
        caller's transaction: each move is (old key, {key field: new key, column: value, ...}), every move replacing
        the same columns. The rows are staged first, so swaps and chains work, then deleted and written back under
        their new keys (a distribution column cannot be updated in place on Citus); a row already at a new key is
        replaced; the keyword text is rebuilt from the new values."""
        if not moves:
            return
        olds = [old for old, _ in moves]
        news = [new[self.spec.key_field] for _, new in moves]
        staging = sql.Identifier("pixsearch_rekeyed")
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT * FROM {} WHERE {} = ANY(%s)").format(
            staging, self.table, self.key), (olds,))
        self.delete(conn, olds + news)
        replaced = list(moves[0][1])
        kept = [name for name in self._all_columns() if name not in replaced]
        target = sql.SQL(", ").join(map(sql.Identifier, [*replaced, *kept]))
        values = sql.SQL(", ").join([*(sql.Placeholder(f"new_{i}") for i in range(len(replaced))),
                                     *map(sql.Identifier, kept)])
        statement = sql.SQL("INSERT INTO {t} ({target}) SELECT {values} FROM {s} WHERE {key} = %(old)s").format(
            t=self.table, target=target, values=values, s=staging, key=self.key)
        with conn.cursor() as cur:
            cur.executemany(statement, [{"old": old, **{f"new_{i}": new[name] for i, name in enumerate(replaced)}}
                                        for old, new in moves])
        conn.execute(sql.SQL("DROP TABLE {}").format(staging))
        self.rebuild_text(conn, news)

    def rebuild_text(self, conn: psycopg.Connection, keys: Sequence[str]) -> None:
        """Recompute the keyword text columns of these rows from their fields."""
        if not self.text_columns or not keys:
            return
        sets = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(column), self._document_text(self.table, fields))
            for column, fields in self.text_columns)
        conn.execute(sql.SQL("UPDATE {} SET {} WHERE {} = ANY(%s)").format(self.table, sets, self.key), (list(keys),))

    def _all_columns(self) -> list[str]:
        names = [self.spec.key_field, *(f.name for f in self.spec.fields), "indexed_at"]
        names += [column for column, _ in self.text_columns]
        return names + [vf.name for vf in self.spec.vector_fields]

    def ann_index_name(self, vf: VectorField) -> str:
        return self.derived_name(vf.name, vf.algorithm)

    def ann_index_names(self) -> list[str]:
        return [self.ann_index_name(vf) for vf in self.spec.vector_fields if vf.algorithm != "exact"]

    def _indexed_expression(self, vf: VectorField, query: sql.Composable | None = None) -> sql.Composable:
        """The column (or for bit storage its binary quantisation) as the ANN index sees it; with `query`, the
        matching expression for the query vector."""
        target = sql.Identifier(vf.name) if query is None else query
        if vf.storage == "bit":
            return sql.SQL("(binary_quantize({})::bit({}))").format(target, sql.Literal(vf.dims))
        return target

    def _create_index_sql(self, vf: VectorField, lists: int | None) -> sql.Composed:
        method = vf.algorithm
        if method == "hnsw":
            with_params = {"m": vf.params["m"], "ef_construction": vf.params["ef_construction"]}
        else:
            with_params = {"lists": lists}
        options = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(int(v))) for k, v in with_params.items()
        )
        return sql.SQL("CREATE INDEX {} ON {} USING {} ({} {}) WITH ({})").format(
            sql.Identifier(self.ann_index_name(vf)),
            self.table,
            sql.SQL(method),
            self._indexed_expression(vf),
            sql.SQL(vf.opclass),
            options,
        )

    def ann_indexes_ready(self, conn: psycopg.Connection) -> dict[str, bool]:
        """For each ANN-indexed vector field: whether its index exists and is valid (a killed CREATE INDEX
        CONCURRENTLY leaves an invalid one)."""
        rows = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = to_regclass(%s)", (self.table.as_string(conn),)
        ).fetchall()
        valid = {name: ok for name, ok in rows}
        return {vf.name: bool(valid.get(self.ann_index_name(vf))) for vf in self.spec.vector_fields
                if vf.algorithm != "exact"}

    def build_progress(self, conn: psycopg.Connection) -> dict[str, Any] | None:
        """The running CREATE INDEX of this table (summed over the workers' shards when distributed), or None."""
        if self.distributed:
            builds = [b for (result,) in conn.execute(_PROGRESS_ON_WORKERS) for b in json.loads(result)]
        else:
            row = conn.execute(_PROGRESS_LOCAL, (self.table.as_string(conn),)).fetchone()
            builds = [dict(zip(_PROGRESS_COLUMNS, row))] if row else []
        if not builds:
            return None
        summed = {c: sum(b[c] or 0 for b in builds) for c in _PROGRESS_COLUMNS[1:]}
        return {"phase": builds[0]["phase"], **summed}

    def ann_index_exists(self, conn: psycopg.Connection, vf: VectorField) -> bool:
        row = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(self.ann_index_name(vf)).as_string(conn),))
        return row.fetchone()[0] is not None

    def drop_ann_index(self, conn: psycopg.Connection, vf: VectorField) -> bool:
        """Drop the ANN index of one vector field if it exists; returns whether it did. build_index makes it again."""
        existed = self.ann_index_exists(conn, vf)
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(self.ann_index_name(vf))))
        return existed

    def build_index(
        self,
        db: Database,
        vf: VectorField,
        *,
        progress: Callable[[dict[str, Any]], None] | None = None,
        maintenance_work_mem_mb: int | None = None,
    ) -> dict[str, Any]:
        """(Re)build the ANN index of one vector field. Returns what was built (lists, rows, seconds, memory)."""
        if vf.algorithm == "exact":
            raise SchemaError(f"vector field {vf.name!r} uses exact search: it has no ANN index to build")
        with db.connection() as conn:
            rows = self.count(conn)
        lists = None
        if vf.algorithm == "ivfflat":
            if rows == 0:
                raise SchemaError(
                    f"cannot build the IVFFlat index of {self.spec.name!r}.{vf.name}: the table is empty. IVFFlat "
                    "learns its list centroids from the data, so an index built now would be useless. Add vectors "
                    f"first, then run: pixsearch indexes rebuild {self.spec.name}"
                )
            lists = vf.params.get("lists") or default_lists(rows)
            lists = min(lists, rows)
        mem_mb = maintenance_work_mem_mb or _maintenance_work_mem_mb(rows, vf)
        stop = threading.Event()
        watcher = None
        if progress is not None:
            watcher = threading.Thread(target=self._watch_build, args=(db, progress, stop), daemon=True)
            watcher.start()
        started = time.perf_counter()
        try:
            with db.connection() as conn, conn.transaction():
                set_local(conn, {"maintenance_work_mem": f"{mem_mb}MB",
                                 "max_parallel_maintenance_workers": parallel_workers()}, propagate=self.distributed)
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(self.ann_index_name(vf))))
                conn.execute(self._create_index_sql(vf, lists))
        finally:
            stop.set()
            if watcher is not None:
                watcher.join(timeout=5)
        return {
            "field": vf.name,
            "algorithm": vf.algorithm,
            "rows": rows,
            "lists": lists,
            "seconds": round(time.perf_counter() - started, 3),
            "maintenance_work_mem_mb": mem_mb,
        }

    def _watch_build(self, db: Database, progress: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
        """Report this table's build progress every half second (from the workers when distributed)."""
        try:
            with psycopg.connect(db.conninfo, autocommit=True) as conn:
                while not stop.wait(0.5):
                    current = self.build_progress(conn)
                    if current:
                        progress(current)
        except (psycopg.Error, ValueError):
            pass  # progress is a nicety; the build itself reports real errors

    def rename_to(self, conn: psycopg.Connection, renamed: IndexSpec) -> None:
        """Rename the table and every index named after it (ANN, keyword, browse, primary key): a later index
        created under the old name must not find those names taken."""
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(self.table, sql.Identifier(renamed.table_name)))
        existing = {row[0] for row in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s",
            (renamed.table_name,),
        )}
        moves = list(zip(self.derived_names(), DocumentTable(renamed).derived_names()))
        moves.append((f"{self.spec.table_name}_pkey", f"{renamed.table_name}_pkey"))
        for old, new in moves:
            if old in existing and old != new:
                conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))

    # -- writes ------------------------------------------------------------------------------------------------------
    @property
    def _write_columns(self) -> list[tuple[str, str]]:
        cols = [(self.spec.key_field, "text")] + [(f.name, f.copy_type) for f in self.spec.fields]
        return cols + [(vf.name, vf.column_type) for vf in self.spec.vector_fields]

    def write(
        self,
        conn: psycopg.Connection,
        rows: Sequence[dict[str, Any]],
        *,
        columns: Sequence[str] | None = None,
        insert_missing: bool = True,
    ) -> set[str]:
        """Write rows (dicts keyed by column) atomically; returns the keys written.

        columns=None replaces whole documents (columns a row lacks become NULL: Azure's upload). With `columns`, only
        those are set and every other column keeps its value (Azure's merge); then insert_missing=False touches only
        documents that exist (merge), True inserts the others (mergeOrUpload).

        COPY BINARY into a staging table, then one INSERT .. ON CONFLICT (or UPDATE .. FROM): the caller's
        connection context commits the batch as a whole, so an interrupted run never leaves part of one.
        """
        if not rows:
            return set()
        all_columns = dict(self._write_columns)
        names = [self.spec.key_field] + [c for c in (columns if columns is not None else list(all_columns)[1:])
                                         if c != self.spec.key_field]
        unknown = [n for n in names if n not in all_columns]
        if unknown:
            raise SchemaError(f"index {self.spec.name!r} has no field(s) {', '.join(unknown)}")
        vector_types = {vf.name: vf for vf in self.spec.vector_fields}
        idents = sql.SQL(", ").join(map(sql.Identifier, names))
        staging = sql.Identifier("pixsearch_staging")
        whole = columns is None
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(staging, self.table)
            )
            with conn.cursor() as cur:
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(staging, idents)) as copy:
                    copy.set_types([all_columns[name] for name in names])
                    for row in rows:
                        values = []
                        for name in names:
                            value = row.get(name)
                            if value is not None and name in vector_types:
                                value = _checked_vector(value, vector_types[name], row.get(self.spec.key_field))
                            values.append(value)
                        copy.write_row(values)
            set_names = [sql.Identifier(n) for n in names[1:]] + [sql.Identifier("indexed_at")]
            if insert_missing:
                extra_names, extra_values = [sql.Identifier("indexed_at")], [sql.SQL("now()")]
                for column, fields in self.text_columns if whole else ():
                    extra_names.append(sql.Identifier(column))
                    extra_values.append(self._document_text(staging, fields))
                    set_names.append(sql.Identifier(column))
                statement = sql.SQL(
                    "INSERT INTO {t} ({cols}, {extra_names}) SELECT {cols}, {extra_values} FROM {s} "
                    "ON CONFLICT ({conflict}) DO UPDATE SET {updates} RETURNING {key}"
                ).format(
                    t=self.table, cols=idents, extra_names=sql.SQL(", ").join(extra_names),
                    extra_values=sql.SQL(", ").join(extra_values), s=staging, key=self.key,
                    conflict=self.conflict_target(),
                    updates=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(i) for i in set_names),
                )
            else:
                assignments = [sql.SQL("{0} = s.{0}").format(sql.Identifier(n)) for n in names[1:]]
                assignments.append(sql.SQL("indexed_at = now()"))
                statement = sql.SQL("UPDATE {t} AS t SET {sets} FROM {s} AS s WHERE t.{key} = s.{key} RETURNING t.{key}")
                statement = statement.format(t=self.table, sets=sql.SQL(", ").join(assignments), s=staging, key=self.key)
            written = {row[0] for row in conn.execute(statement)}
            rebuilt = [(column, fields) for column, fields in self.text_columns
                       if any(f.name in names for f in fields)] if not whole and written else []
            if rebuilt:
                # A merge changes some fields: the keyword text made from them is rebuilt from the merged rows.
                conn.execute(
                    sql.SQL("UPDATE {t} SET {sets} WHERE {key} = ANY(%s)").format(
                        t=self.table, key=self.key, sets=sql.SQL(", ").join(
                            sql.SQL("{} = {}").format(sql.Identifier(column), self._document_text(self.table, fields))
                            for column, fields in rebuilt)),
                    (list(written),),
                )
        return written

    def update_columns(self, conn: psycopg.Connection, key: str, values: dict[str, Any]) -> None:
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in values
        )
        conn.execute(
            sql.SQL("UPDATE {} SET {} WHERE {} = %(_key)s").format(self.table, assignments, self.key),
            {**values, "_key": key},
        )

    def delete(self, conn: psycopg.Connection, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        query = sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(self.table, self.key)
        return conn.execute(query, (list(ids),)).rowcount

    def analyze(self, conn: psycopg.Connection) -> None:
        """Refresh planner statistics after bulk writes, so the planner costs the ANN index against a real row count
        instead of guessing (a guess can make it pick a full scan, or the index, by chance)."""
        conn.execute(sql.SQL("ANALYZE {}").format(self.table))

    # -- reads -------------------------------------------------------------------------------------------------------
    def count(self, conn: psycopg.Connection) -> int:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()[0]

    def select(
        self, conn: psycopg.Connection, ids: Sequence[str], columns: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """The given columns of the given documents. Results come in binary: a vector is then a block of float32s
        numpy reads as is, instead of text to parse (10,000 x 512 in a fraction of a second)."""
        selected = sql.SQL(", ").join([self.key, *map(sql.Identifier, columns)])
        query = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s)").format(selected, self.table, self.key)
        return {row[0]: dict(zip(columns, row[1:])) for row in conn.execute(query, (list(ids),), binary=True)}

    def iter_vectors(self, conn: psycopg.Connection, field_name: str, batch: int = 10_000
                     ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every (key, vector) of one field in key order, in chunks, through a server-side binary cursor: an export
        streams without holding the index in memory twice."""
        vf = self.spec.vector_field(field_name)
        query = sql.SQL("SELECT {}, {} FROM {} WHERE {} IS NOT NULL ORDER BY {}").format(
            self.key, sql.Identifier(vf.name), self.table, sql.Identifier(vf.name), self.key)
        with conn.cursor(name="pixsearch_export", binary=True) as cur:
            cur.itersize = batch
            cur.execute(query)
            while rows := cur.fetchmany(batch):
                yield [r[0] for r in rows], np.stack([np.asarray(r[1].to_numpy(), dtype=np.float32) for r in rows])

    def near_pairs(self, conn: psycopg.Connection, field_name: str, max_distance: float, k: int = 10
                   ) -> list[tuple[str, str, float]]:
        """(key, key, distance) of pairs within `max_distance` of each other, found through the ANN index: each
        row's k nearest neighbours (a lateral kNN per row, not all pairs), each pair once."""
        vf = self.spec.vector_field(field_name)
        op = _operator(OPERATORS[vf.exact_metric])
        column = sql.Identifier(vf.name)
        if self.distributed:  # Citus cannot plan a lateral join on a non-distribution column: one query per row
            pairs = []
            for keys, block in self.iter_vectors(conn, vf.name):
                for key, vector in zip(keys, block):
                    for hit in self.search(conn, vf.name, vector, k + 1, options=QueryOptions()).hits:
                        if hit.id > key and hit.distance <= max_distance:
                            pairs.append((key, hit.id, hit.distance))
            return pairs
        statement = sql.SQL(
            "SELECT a.{key}, n.{key}, n.distance FROM {t} a CROSS JOIN LATERAL ("
            "SELECT b.{key}, b.{col} {op} a.{col} AS distance FROM {t} b WHERE b.{col} IS NOT NULL "
            "ORDER BY b.{col} {op} a.{col} LIMIT %(k)s) n "
            "WHERE a.{col} IS NOT NULL AND n.{key} > a.{key} AND n.distance <= %(max)s"
        ).format(key=self.key, t=self.table, col=column, op=op)
        with conn.transaction():
            self._apply_query_settings(conn, vf, k + 1, False, QueryOptions())
            return [(a, b, float(d)) for a, b, d in conn.execute(statement, {"k": k + 1, "max": max_distance})]

    def count_vectors(self, conn: psycopg.Connection, field_name: str) -> int:
        column = sql.Identifier(self.spec.vector_field(field_name).name)
        return conn.execute(sql.SQL("SELECT count({}) FROM {}").format(column, self.table)).fetchone()[0]

    def distinct_values(self, conn: psycopg.Connection, column: str) -> list[Any]:
        query = sql.SQL("SELECT DISTINCT {c} FROM {t} WHERE {c} IS NOT NULL").format(
            c=sql.Identifier(column), t=self.table
        )
        return [row[0] for row in conn.execute(query)]

    def rows_where_prefix(self, conn: psycopg.Connection, column: str, prefix: str) -> list[tuple[str, Any]]:
        query = sql.SQL("SELECT {}, {} FROM {} WHERE starts_with({}, %s)").format(
            self.key, sql.Identifier(column), self.table, sql.Identifier(column)
        )
        return [(row[0], row[1]) for row in conn.execute(query, (prefix,))]

    def sample_vectors(self, conn: psycopg.Connection, vf: VectorField, n: int, seed: float = 0.42) -> list[tuple]:
        """n stored (key, vector) pairs, pseudo-randomly but repeatably chosen."""
        conn.execute("SELECT setseed(%s)", (seed,))
        query = sql.SQL("SELECT {}, {} FROM {} WHERE {} IS NOT NULL ORDER BY random() LIMIT %s").format(
            self.key, sql.Identifier(vf.name), self.table, sql.Identifier(vf.name)
        )
        return conn.execute(query, (n,)).fetchall()

    @property
    def retrievable(self) -> list[str]:
        return [f.name for f in self.spec.fields if f.retrievable]

    # -- search ------------------------------------------------------------------------------------------------------
    def knn_sql(self, vf: VectorField, where: sql.Composable | None, *, exact: bool = False) -> sql.Composed:
        """The kNN query. Its ORDER BY uses the operator of the index's operator class so the index serves it.

        Filtered queries run with relaxed-order iterative scans, so their candidates are re-sorted by distance in an
        outer query (the MATERIALIZED CTE keeps the planner from merging the two).
        Fields with an `oversample` parameter take k * oversample candidates in index order and re-rank them by the
        exact distance: bit (binary-quantised) fields rank candidates by hamming/jaccard on the bits and re-rank by
        the exact metric on the stored float vectors; halfvec fields re-rank away the float16 rounding of the index.
        """
        q = sql.Placeholder("q")
        column = sql.Identifier(vf.name)
        cols = sql.SQL(", ").join([self.key] + [sql.Identifier(c) for c in self.retrievable])
        where_sql = _where_clause(where)
        if vf.params.get("oversample") and not exact:
            rerank_op = _operator(OPERATORS[vf.exact_metric])
            order = sql.SQL("{} {} {}").format(
                self._indexed_expression(vf), _operator(vf.operator), self._indexed_expression(vf, q)
            )
            return sql.SQL(
                "WITH candidates AS MATERIALIZED (SELECT {cols}, {col} AS pixsearch_rerank FROM {t}{where} "
                "ORDER BY {order} LIMIT %(candidates)s) "
                "SELECT {cols}, pixsearch_rerank {op} {q} AS distance FROM candidates ORDER BY distance LIMIT %(k)s"
            ).format(cols=cols, col=column, t=self.table, where=where_sql, order=order, op=rerank_op, q=q)
        op = _operator(OPERATORS[vf.exact_metric])
        inner = sql.SQL("SELECT {cols}, {col} {op} {q} AS distance FROM {t}{where} ORDER BY {col} {op} {q} LIMIT %(k)s")
        inner = inner.format(cols=cols, col=column, op=op, q=q, t=self.table, where=where_sql)
        if where is None:
            return inner
        return sql.SQL("WITH hits AS MATERIALIZED ({}) SELECT * FROM hits ORDER BY distance").format(inner)

    def _query_settings(self, vf: VectorField, k: int, filtered: bool, options: QueryOptions) -> dict[str, Any]:
        """Every ANN knob this query depends on, on or off: one search runs several kNN statements in one
        transaction, and a knob left from an earlier one (an exact list, a filtered list) must not leak into the
        next. enable_indexscan is off only for exact queries (which always run in a transaction of their own)."""
        settings: dict[str, Any] = {}
        if options.exact:
            return {"enable_indexscan": "off"}
        tuned = self.spec.tuned(vf.name)
        iterative = filtered and options.iterative
        if vf.algorithm == "hnsw":
            ef = options.ef_search or tuned.get("ef_search") or DEFAULT_EF_SEARCH
            settings["hnsw.ef_search"] = min(MAX_EF_SEARCH, max(ef, k * vf.params.get("oversample", 1)))
            settings["hnsw.iterative_scan"] = "relaxed_order" if iterative else "off"
            if iterative:
                settings["hnsw.max_scan_tuples"] = options.max_scan_tuples or DEFAULT_MAX_SCAN_TUPLES
        elif vf.algorithm == "ivfflat":
            lists = self.spec.settings.get("built", {}).get(vf.name, {}).get("lists") or 1
            settings["ivfflat.probes"] = options.probes or tuned.get("probes") or default_probes(lists)
            settings["ivfflat.iterative_scan"] = "relaxed_order" if iterative else "off"
            if iterative:
                settings["ivfflat.max_probes"] = lists
        return settings

    def _apply_query_settings(
        self, conn: psycopg.Connection, vf: VectorField, k: int, filtered: bool, options: QueryOptions
    ) -> None:
        """SET LOCAL (for this transaction only) the query's knobs (_query_settings), and enable_indexscan back on
        unless the query is exact."""
        settings = {"enable_indexscan": "on", **self._query_settings(vf, k, filtered, options)}
        set_local(conn, settings, propagate=self.distributed)

    def _resolve(self, field_name: str | None, filter: Filter | None):
        vf = self.spec.vector_field(field_name)
        where, params = compile_filter(self.spec, filter)
        return vf, where, params

    def _run_knn(self, conn, vf, where, params, vector, k, options: QueryOptions, prefix: sql.Composable,
                 explain: bool = False):
        """Run the kNN statement (optionally EXPLAINed) with its ANN settings local to one transaction."""
        query_params = {**params, "q": as_query_vector(vector, vf), "k": k,
                        "candidates": k * vf.params.get("oversample", 1)}
        inside = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        if not (inside or explain or options.exact or self.distributed):
            # On its own, on one node: the settings at session level where they changed, then the statement in
            # autocommit — one round trip in the steady state (set_session).
            statement = prefix + self.knn_sql(vf, where, exact=False)
            conn.autocommit = True
            try:
                set_session(conn, self._query_settings(vf, k, where is not None, options))
                cursor = conn.execute(statement, query_params)
                return cursor
            finally:
                conn.autocommit = False
        # Inside a search's snapshot the settings are simply set again for each statement (all of them, every time);
        # otherwise (exact, EXPLAIN, Citus, whose workers see only SET LOCAL) the statement gets a transaction of its
        # own, so that they end with it.
        with nullcontext() if inside else conn.transaction():
            statement = prefix + self.knn_sql(vf, where, exact=options.exact)
            self._apply_query_settings(conn, vf, k, where is not None, options)
            if explain and self.distributed:
                # Citus cannot fetch the workers' plans of a statement with bind parameters ("Could not get remote
                # plan"): the values are bound on the client for EXPLAIN, and every shard's plan is shown.
                set_local(conn, {"citus.explain_all_tasks": "on"})
                cursor = psycopg.ClientCursor(conn)
                cursor.execute(statement, query_params)
                return cursor
            return conn.execute(statement, query_params)

    def search(
        self,
        conn: psycopg.Connection,
        field_name: str | None,
        vector: Any,
        k: int,
        *,
        filter: Filter | None = None,
        options: QueryOptions = QueryOptions(),
        count_if_short: bool = True,
    ) -> SearchResult:
        """The k nearest rows. When fewer come back, the result says why (count_if_short: count what matches)."""
        vf, where, params = self._resolve(field_name, filter)
        options = self._exact_if_selective(conn, where, params, options)
        rows = self._run_knn(conn, vf, where, params, vector, k, options, sql.SQL("")).fetchall()
        names = [self.spec.key_field] + self.retrievable
        hits = []
        for row in rows:
            distance = row[-1]
            if distance is None:
                continue
            distance = float(distance)
            document = dict(zip(names[1:], row[1:-1]))
            hits.append(Hit(row[0], similarity(vf.exact_metric, distance, vf.dims), distance, document))
        result = SearchResult(hits=hits, k=k)
        if len(hits) < k and count_if_short:
            matching = self._count_matching(conn, vf, where, params, limit=k)
            result.complete = False
            result.matching = matching
            result.reason = "scan_limit" if matching > len(hits) else "fewer_matches"
        return result

    def keyword_search(
        self, conn: psycopg.Connection, text: str, limit: int, *, filter: Filter | None = None,
        keyword_list: str | None = None,
    ) -> list[tuple[str, float]]:
        """Full-text (english stems, accents folded) and trigram (partial names) matches, best first.

        Any word may match (Azure's default searchMode=any): a photo named rocket.jpg matches "a rocket launch".
        Score: ts_rank_cd of the full-text match (more words matched, closer together, rank higher) plus the best
        word similarity of the text to a searchable string. keyword_list: the list of the fields that have that
        keyword list of their own (full-text only) instead of the general one.
        """
        if keyword_list is not None:
            own = [f for f in self.spec.fields if f.keyword_list == keyword_list]
            if not own:
                raise SchemaError(f"index {self.spec.name!r} has no {keyword_list!r} keyword list")
            columns, strings = [keyword_column(f) for f in own], []
        elif not self.searchable:
            raise SchemaError(f"index {self.spec.name!r} has no searchable fields: keyword search needs some")
        else:
            columns = [SEARCH_TEXT]
            strings = [sql.Identifier(f.name) for f in self.searchable if f.type == "string"]
        where, params = compile_filter(self.spec, filter)
        t = sql.Placeholder("text")
        words = [w for w in re.findall(r"[^\W_]+", text) if w.lower() != "or"]
        params = {**params, "any_word": " or ".join(words)}
        query = sql.SQL("websearch_to_tsquery('english', unaccent(%(any_word)s))")
        similarity_terms = [sql.SQL("coalesce(word_similarity({}, {}), 0)").format(t, c) for c in strings]
        similarity_sql = (
            sql.SQL("greatest({})").format(sql.SQL(", ").join(similarity_terms)) if similarity_terms else sql.SQL("0")
        )
        matches = [sql.SQL("{} @@ {}").format(sql.Identifier(c), query) for c in columns]
        matches += [sql.SQL("{} <%% {}").format(t, c) for c in strings]
        condition = sql.SQL("({})").format(sql.SQL(" OR ").join(matches))
        if where is not None:
            condition = sql.SQL("{} AND {}").format(condition, where)
        rank = sql.SQL(" + ").join(sql.SQL("coalesce(ts_rank_cd({}, {}), 0)").format(sql.Identifier(c), query)
                                   for c in columns)
        statement = sql.SQL(
            "SELECT {key}, {rank} + {similarity} AS score FROM {t} WHERE {condition} "
            "ORDER BY score DESC, {key} LIMIT %(limit)s"
        ).format(key=self.key, rank=rank, similarity=similarity_sql, t=self.table, condition=condition)
        rows = conn.execute(statement, {**params, "text": text, "limit": limit}).fetchall()
        return [(row[0], float(row[1])) for row in rows]

    def browse(
        self,
        conn: psycopg.Connection,
        limit: int,
        offset: int = 0,
        *,
        filter: Filter | None = None,
        sort: Sequence[tuple[str, bool]] = (),
    ) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """Documents passing `filter` in `sort` order (missing values last, then newest indexed first), one page of
        (key, fields), plus how many pass the filter in all."""
        where, params = compile_filter(self.spec, filter)
        where_sql = _where_clause(where)
        rows = conn.execute(self.browse_sql(sort, where), {**params, "limit": limit, "offset": offset}).fetchall()
        total = conn.execute(sql.SQL("SELECT count(*) FROM {}{}").format(self.table, where_sql), params).fetchone()[0]
        return [(row[0], dict(zip(self.retrievable, row[1:]))) for row in rows], total

    def browse_sql(self, sort: Sequence[tuple[str, bool]], where: sql.Composable | None = None) -> sql.Composed:
        """One page of a listing (parameters: limit, offset and the filter's)."""
        for name, _ in sort:
            if not self.spec.field(name).sortable:
                raise SchemaError(f"field {name!r} is not sortable in index {self.spec.name!r}")
        columns = [self.key] + [sql.Identifier(c) for c in self.retrievable]
        where_sql = _where_clause(where)
        return sql.SQL("SELECT {} FROM {}{} ORDER BY {} LIMIT %(limit)s OFFSET %(offset)s").format(
            sql.SQL(", ").join(columns), self.table, where_sql, sql.SQL(", ").join(self._browse_order(sort))
        )

    def _browse_order(self, sort: Sequence[tuple[str, bool]]) -> list[sql.Composable]:
        """ORDER BY terms of a listing: the fields (missing values last), then newest indexed first, then the key."""
        order = [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL("DESC NULLS LAST" if descending else "ASC NULLS LAST"))
                 for name, descending in sort]
        return order + [sql.SQL("indexed_at DESC"), self.key]

    def fetch(self, conn: psycopg.Connection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Retrievable fields of the given documents."""
        return self.select(conn, ids, self.retrievable) if ids else {}

    def facet_counts(
        self,
        conn: psycopg.Connection,
        field_name: str,
        *,
        interval: str | None = None,
        limit: int = 10,
        filter: Filter | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[tuple[Any, int]]:
        """(value, count) pairs, most frequent first, over rows passing `filter` (and among `ids` when given).

        Collections count each element; `interval` (year, month, day) buckets a datetime field.
        """
        f = self.spec.field(field_name)
        if not f.facetable:
            raise SchemaError(f"field {field_name!r} is not facetable in index {self.spec.name!r}")
        where, params = compile_filter(self.spec, filter)
        value = sql.Identifier(f.name)
        if f.type.endswith("[]"):
            value = sql.SQL("unnest({})").format(value)
        elif interval is not None:
            if f.type != "datetime" or interval not in ("year", "month", "day"):
                raise SchemaError("interval (year, month, day) applies to datetime fields")
            value = sql.SQL("date_trunc({}, {} AT TIME ZONE 'UTC')").format(sql.Literal(interval), value)
        conditions = [sql.SQL("{} IS NOT NULL").format(sql.Identifier(f.name))]
        if where is not None:
            conditions.append(where)
        if ids is not None:
            conditions.append(sql.SQL("{} = ANY(%(facet_ids)s)").format(self.key))
            params = {**params, "facet_ids": list(ids)}
        statement = sql.SQL(
            "SELECT value, count(*) AS n FROM (SELECT {value} AS value FROM {t} WHERE {cond}) AS v "
            "WHERE value IS NOT NULL GROUP BY value ORDER BY n DESC, value LIMIT %(facet_limit)s"
        ).format(value=value, t=self.table, cond=sql.SQL(" AND ").join(conditions))
        return [(row[0], row[1]) for row in conn.execute(statement, {**params, "facet_limit": limit})]

    def _exact_if_selective(
        self, conn: psycopg.Connection, where: sql.Composable | None, params: dict, options: QueryOptions
    ) -> QueryOptions:
        """Exact search for a filter that passes at most EXACT_BELOW_SHARE of the rows, by the planner's estimate
        from the table's statistics (a table never analysed, or a distributed one, whose statistics live on the
        workers, keeps the index)."""
        if where is None or options.exact or not options.iterative or self.distributed:
            return options
        inside = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with nullcontext() if inside else conn.transaction():  # a standalone search leaves no transaction open
            total = conn.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
                                 (self.table.as_string(conn),)).fetchone()[0]
            if total is None or total <= 0:
                return options
            plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(self.table, where),
                                params).fetchone()[0]
        passing = plan[0]["Plan"]["Plan Rows"]
        return replace(options, exact=True) if passing <= EXACT_BELOW_SHARE * total else options

    def _count_matching(
        self, conn: psycopg.Connection, vf: VectorField, where: sql.Composable | None, params: dict, limit: int
    ) -> int:
        """How many rows (up to `limit`) have this vector and pass the filter."""
        condition = sql.SQL("{} IS NOT NULL").format(sql.Identifier(vf.name))
        if where is not None:
            condition = sql.SQL("{} AND {}").format(condition, where)
        query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT %(limit)s) AS matching").format(
            self.table, condition
        )
        return conn.execute(query, {**params, "limit": limit}).fetchone()[0]

    def explain(
        self,
        conn: psycopg.Connection,
        field_name: str | None,
        vector: Any,
        k: int,
        *,
        filter: Filter | None = None,
        options: QueryOptions = QueryOptions(),
        analyze: bool = False,
    ) -> str:
        vf, where, params = self._resolve(field_name, filter)
        options = self._exact_if_selective(conn, where, params, options)
        prefix = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN ")
        rows = self._run_knn(conn, vf, where, params, vector, k, options, prefix, explain=True).fetchall()
        return "\n".join(row[0] for row in rows)

    # -- sizes -------------------------------------------------------------------------------------------------------
    def stats(self, conn: psycopg.Connection) -> dict[str, Any]:
        """Rows and sizes. On a distributed table the coordinator's own table is an empty shell: sizes are Citus'
        sums over every shard on every node, and the shard and node counts are reported too."""
        name = self.table.as_string(conn)
        rows = self.count(conn)
        table_size, total_size, relation_size = (
            ("citus_table_size", "citus_total_relation_size", "citus_relation_size") if self.distributed
            else ("pg_table_size", "pg_total_relation_size", "pg_relation_size"))
        table_bytes, total_bytes = conn.execute(
            sql.SQL("SELECT {}(%s::regclass), {}(%s::regclass)").format(
                sql.Identifier(table_size), sql.Identifier(total_size)), (name, name)
        ).fetchone()
        fields = {}
        for vf in self.spec.vector_fields:
            index_name = sql.Identifier(self.ann_index_name(vf)).as_string(conn)
            index_bytes = conn.execute(
                sql.SQL("SELECT CASE WHEN to_regclass(%s) IS NULL THEN NULL ELSE {}(to_regclass(%s)) END").format(
                    sql.Identifier(relation_size)),
                (index_name, index_name),
            ).fetchone()[0]
            fields[vf.name] = {
                "dims": vf.dims,
                "metric": vf.metric,
                "storage": vf.storage,
                "algorithm": vf.algorithm,
                "params": vf.params,
                "model_id": vf.model_id,
                "ann_index": self.ann_index_name(vf) if index_bytes is not None else None,
                "ann_index_bytes": index_bytes,
                "tuned": self.spec.tuned(vf.name) or None,
            }
        stats = {
            "index": self.spec.name,
            "rows": rows,
            "table_bytes": table_bytes,
            "total_bytes": total_bytes,
            "vector_fields": fields,
        }
        if self.distributed:
            stats["shards"], stats["nodes"] = conn.execute(
                "SELECT count(*), count(DISTINCT (nodename, nodeport)) FROM citus_shards WHERE table_name = %s::regclass",
                (name,),
            ).fetchone()
        return stats


_PROGRESS_COLUMNS = ("phase", "blocks_done", "blocks_total", "tuples_done", "tuples_total")
_PROGRESS_LOCAL = ("SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total"
                   " FROM pg_stat_progress_create_index WHERE relid = to_regclass(%s)")
# The coordinator of a distributed table builds nothing itself: its workers build the shards' indexes.
_PROGRESS_ON_WORKERS = (
    "SELECT result FROM run_command_on_workers($$SELECT coalesce(json_agg(json_build_object("
    "'phase', phase, 'blocks_done', blocks_done, 'blocks_total', blocks_total, 'tuples_done', tuples_done, "
    "'tuples_total', tuples_total)), '[]') FROM pg_stat_progress_create_index$$) WHERE success"
)
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


def derived_identifier(*parts: str) -> str:
    name = "_".join(parts)
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return name[: MAX_IDENTIFIER_BYTES - len(digest) - 1] + "_" + digest


def _where_clause(where: sql.Composable | None) -> sql.Composable:
    return sql.SQL(" WHERE {}").format(where) if where is not None else sql.SQL("")


def _checked_vector(value: Any, vf: VectorField, key: Any) -> Vector | HalfVector:
    return _pg_vector(
        value,
        vf,
        lambda got: f"document {key!r}: vector field {vf.name!r} needs {vf.dims} dimensions, got {got}",
        f"document {key!r}: vector field {vf.name!r} contains NaN or infinite values",
    )


def _maintenance_work_mem_mb(rows: int, vf: VectorField) -> int:
    """Enough memory for the graph/lists to be built in memory (much faster), within sane bounds."""
    import psutil

    bytes_per_element = {"vector": 4, "halfvec": 2, "bit": 1 / 8}[vf.storage] * vf.dims
    # In-memory HNSW elements carry neighbour lists for layer 0 (2m) and upper layers, with pointers, beyond the
    # 6-byte on-disk TIDs: measured ~850 B per 50-d row at m=16 (pgvector warns when the graph stops fitting).
    per_row = bytes_per_element + 2 * vf.params.get("m", 16) * 16 + 300
    wanted_mb = int(rows * per_row * 1.2 / MB) + 64
    ceiling_mb = max(64, int(psutil.virtual_memory().total / MB / 4))
    return max(64, min(wanted_mb, ceiling_mb, 4096))


def iter_chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

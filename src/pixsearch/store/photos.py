"""The per-index photo table: DDL, batched COPY BINARY writes, incremental-ingest lookups and kNN search."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Sequence

import numpy as np
import psycopg
from psycopg import sql

from pixsearch.store.registry import IndexSpec, VectorField

# (column, SQL type as written in DDL, type name for binary COPY)
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "text PRIMARY KEY", "text"),
    ("path", "text NOT NULL", "text"),
    ("folder", "text NOT NULL", "text"),
    ("filename", "text NOT NULL", "text"),
    ("content_hash", "text NOT NULL", "text"),
    ("size_bytes", "bigint NOT NULL", "int8"),
    ("mtime_ns", "bigint NOT NULL", "int8"),
    ("format", "text", "text"),
    ("width", "integer", "int4"),
    ("height", "integer", "int4"),
    ("taken_at", "timestamptz", "timestamptz"),
    ("camera", "text", "text"),
    ("gps_lat", "double precision", "float8"),
    ("gps_lon", "double precision", "float8"),
    ("class_ids", "integer[]", "int4[]"),
    ("class_probs", "real[]", "float4[]"),
    ("tags", "text[]", "text[]"),
)

# Columns returned with every hit (vectors are not: they are large and rarely wanted).
_HIT_COLUMNS = ("id", "path", "width", "height", "format", "taken_at", "tags")


@dataclass
class PhotoRecord:
    id: str
    path: str
    folder: str
    filename: str
    content_hash: str
    size_bytes: int
    mtime_ns: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    taken_at: datetime | None = None
    camera: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    class_ids: list[int] = field(default_factory=list)
    class_probs: list[float] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    def row(self, vector_fields: Sequence[VectorField]) -> list[Any]:
        return [getattr(self, name) for name, _, _ in _COLUMNS] + [self.vectors[vf.name] for vf in vector_fields]


@dataclass(frozen=True)
class StoredState:
    """What ingest needs to decide whether a file changed since it was indexed."""

    id: str
    path: str
    size_bytes: int
    mtime_ns: int
    content_hash: str


@dataclass
class Hit:
    id: str
    path: str
    score: float
    distance: float
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: datetime | None = None
    tags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["taken_at"] = self.taken_at.isoformat() if self.taken_at else None
        out["tags"] = list(self.tags or [])
        return out


def _score(metric: str, distance: float) -> float:
    """Turn a pgvector distance into a similarity where higher is better."""
    if metric == "cosine":
        return 1.0 - distance
    if metric == "ip":
        return -distance  # <#> returns the negative inner product
    return -distance


class PhotoTable:
    BUILTIN_COLUMNS = frozenset(name for name, _, _ in _COLUMNS) | {"indexed_at"}

    def __init__(self, spec: IndexSpec):
        self.spec = spec
        self.table = sql.Identifier(spec.table_name)

    # -- DDL -------------------------------------------------------------------------------------------------
    def create(self, conn: psycopg.Connection) -> None:
        columns = [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(ddl)) for name, ddl, _ in _COLUMNS]
        columns.append(sql.SQL("indexed_at timestamptz NOT NULL DEFAULT now()"))
        for vf in self.spec.vector_fields:
            columns.append(sql.SQL("{} vector({})").format(sql.Identifier(vf.name), sql.Literal(int(vf.dims))))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(self.table, sql.SQL(", ").join(columns)))
        for vf in self.spec.vector_fields:
            self._create_ann_index(conn, vf)

    def _create_ann_index(self, conn: psycopg.Connection, vf: VectorField) -> None:
        if vf.algorithm != "hnsw":
            raise ValueError(f"unsupported algorithm {vf.algorithm!r}")
        params = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(int(v))) for k, v in sorted(vf.params.items())
        )
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} {}) WITH ({})").format(
                sql.Identifier(f"{self.spec.table_name}_{vf.name}_hnsw"),
                self.table,
                sql.Identifier(vf.name),
                sql.SQL(vf.opclass),
                params,
            )
        )

    # -- incremental ingest ------------------------------------------------------------------------------------
    def stored_states(self, conn: psycopg.Connection, ids: Sequence[str]) -> dict[str, StoredState]:
        query = sql.SQL(
            "SELECT id, path, size_bytes, mtime_ns, content_hash FROM {} WHERE id = ANY(%s)"
        ).format(self.table)
        return {row[0]: StoredState(*row) for row in conn.execute(query, (list(ids),))}

    def paths_under(self, conn: psycopg.Connection, prefix: str) -> list[tuple[str, str]]:
        query = sql.SQL("SELECT id, path FROM {} WHERE starts_with(path, %s)").format(self.table)
        return [(row[0], row[1]) for row in conn.execute(query, (prefix,))]

    def write(self, conn: psycopg.Connection, records: Sequence[PhotoRecord]) -> None:
        """Upsert a batch atomically: COPY BINARY into a staging table, then one INSERT .. ON CONFLICT.

        The caller's transaction makes the batch all-or-nothing, so an interrupted run never leaves half of one.
        """
        if not records:
            return
        vfs = self.spec.vector_fields
        names = [name for name, _, _ in _COLUMNS] + [vf.name for vf in vfs]
        types = [copy_type for _, _, copy_type in _COLUMNS] + ["vector"] * len(vfs)
        idents = sql.SQL(", ").join(map(sql.Identifier, names))
        staging = sql.Identifier("pixsearch_staging")
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(staging, self.table)
            )
            with conn.cursor() as cur:
                copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(staging, idents)
                with cur.copy(copy_sql) as copy:
                    copy.set_types(types)
                    for record in records:
                        copy.write_row(record.row(vfs))
            updates = sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names[1:] + ["indexed_at"]
            )
            conn.execute(
                sql.SQL("INSERT INTO {t} ({cols}, indexed_at) SELECT {cols}, now() FROM {s} "
                        "ON CONFLICT (id) DO UPDATE SET {updates}").format(
                    t=self.table, cols=idents, s=staging, updates=updates
                )
            )

    def touch(self, conn: psycopg.Connection, changes: Iterable[tuple[str, int, int]]) -> None:
        """Record a new mtime/size for files whose content hash shows they did not really change."""
        query = sql.SQL("UPDATE {} SET mtime_ns = %s, size_bytes = %s WHERE id = %s").format(self.table)
        rows = [(mtime_ns, size, photo_id) for photo_id, size, mtime_ns in changes]
        if rows:
            with conn.cursor() as cur:
                cur.executemany(query, rows)

    def delete(self, conn: psycopg.Connection, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        cur = conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self.table), (list(ids),))
        return cur.rowcount

    def count(self, conn: psycopg.Connection) -> int:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()[0]

    # -- search --------------------------------------------------------------------------------------------------
    def knn_query(self, vf: VectorField) -> sql.Composed:
        """`ORDER BY field <op> query LIMIT k`: the form the ANN index serves (never ORDER BY a derived score)."""
        return sql.SQL("SELECT {cols}, {f} {op} %(q)s AS distance FROM {t} "
                       "ORDER BY {f} {op} %(q)s LIMIT %(k)s").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, _HIT_COLUMNS)),
            f=sql.Identifier(vf.name),
            op=sql.SQL(vf.operator),
            t=self.table,
        )

    def search(self, conn: psycopg.Connection, field_name: str, vector: np.ndarray, k: int) -> list[Hit]:
        vf = self.spec.vector_field(field_name)
        with conn.transaction():
            # ef_search bounds how many candidates HNSW returns; below k it would silently return fewer than k.
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(40, k)),))
            rows = conn.execute(self.knn_query(vf), {"q": _as_vector(vector, vf), "k": k}).fetchall()
        hits = []
        for row in rows:
            values = dict(zip(_HIT_COLUMNS + ("distance",), row))
            distance = float(values.pop("distance"))
            hits.append(Hit(score=_score(vf.metric, distance), distance=distance, **values))
        return hits

    def explain(self, conn: psycopg.Connection, field_name: str, vector: np.ndarray, k: int) -> str:
        vf = self.spec.vector_field(field_name)
        query = sql.SQL("EXPLAIN ") + self.knn_query(vf)
        rows = conn.execute(query, {"q": _as_vector(vector, vf), "k": k}).fetchall()
        return "\n".join(row[0] for row in rows)


def _as_vector(vector: np.ndarray, vf: VectorField):
    from pgvector import Vector

    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    if array.shape[0] != vf.dims:
        raise ValueError(f"vector field {vf.name!r} has {vf.dims} dimensions, the query vector has {array.shape[0]}")
    if not np.all(np.isfinite(array)):
        raise ValueError("the query vector contains NaN or infinite values")
    return Vector(array)

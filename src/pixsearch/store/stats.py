"""Counts, sizes and planner statistics of an index's table."""
from __future__ import annotations

from typing import Any, Sequence

import psycopg
from psycopg import sql

from pixsearch.store.shape import TableShape

INDEX_EXISTS_SQL = sql.SQL("SELECT to_regclass(%s)")
SHARDS_SQL = sql.SQL(
    "SELECT count(*), count(DISTINCT (nodename, nodeport)) FROM citus_shards WHERE table_name = %s::regclass")


def count_sql(shape: TableShape) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(shape.table)


def count_vectors_sql(shape: TableShape, column: str) -> sql.Composed:
    return sql.SQL("SELECT count({}) FROM {}").format(sql.Identifier(column), shape.table)


def missing_condition(columns: Sequence[str]) -> sql.Composed:
    """Rows where any of `columns` is empty."""
    return sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in columns)


def count_missing_sql(shape: TableShape, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {} WHERE {}").format(shape.table, missing_condition(columns))


def _size_functions(shape: TableShape) -> tuple[str, str, str]:
    """On a distributed table the coordinator's own table is an empty shell: Citus' sums over every shard."""
    if shape.distributed:
        return "citus_table_size", "citus_total_relation_size", "citus_relation_size"
    return "pg_table_size", "pg_total_relation_size", "pg_relation_size"


def table_sizes_sql(shape: TableShape) -> sql.Composed:
    """The table's size and its size with indexes and TOAST (parameters: the table's name, twice)."""
    table_size, total_size, _ = _size_functions(shape)
    return sql.SQL("SELECT {}(%s::regclass), {}(%s::regclass)").format(
        sql.Identifier(table_size), sql.Identifier(total_size))


def index_size_sql(shape: TableShape) -> sql.Composed:
    """An index's size, NULL when it does not exist (parameters: its name, twice)."""
    return sql.SQL("SELECT CASE WHEN to_regclass(%s) IS NULL THEN NULL ELSE {}(to_regclass(%s)) END").format(
        sql.Identifier(_size_functions(shape)[2]))


def analyze_sql(shape: TableShape) -> sql.Composed:
    return sql.SQL("ANALYZE {}").format(shape.table)


class TableStats:
    def __init__(self, shape: TableShape):
        self.shape = shape

    def count(self, conn: psycopg.Connection) -> int:
        return conn.execute(count_sql(self.shape)).fetchone()[0]

    def count_vectors(self, conn: psycopg.Connection, field_name: str) -> int:
        column = self.shape.spec.vector_field(field_name).name
        return conn.execute(count_vectors_sql(self.shape, column)).fetchone()[0]

    def count_missing(self, conn: psycopg.Connection, columns: Sequence[str]) -> int:
        return conn.execute(count_missing_sql(self.shape, columns)).fetchone()[0]

    def analyze(self, conn: psycopg.Connection) -> None:
        """Refresh planner statistics after bulk writes, so the planner costs the ANN index against a real row count
        instead of guessing (a guess can make it pick a full scan, or the index, by chance)."""
        conn.execute(analyze_sql(self.shape))

    def stats(self, conn: psycopg.Connection) -> dict[str, Any]:
        """Rows and sizes; on a distributed table sizes are Citus' sums over every shard on every node, and the shard
        and node counts are reported too."""
        spec = self.shape.spec
        name = self.shape.table.as_string(conn)
        rows = self.count(conn)
        table_bytes, total_bytes = conn.execute(table_sizes_sql(self.shape), (name, name)).fetchone()
        fields = {vf.name: self._vector_field_stats(conn, vf) for vf in spec.vector_fields}
        stats = {"index": spec.name, "rows": rows, "table_bytes": table_bytes, "total_bytes": total_bytes,
                 "vector_fields": fields}
        if self.shape.distributed:
            stats["shards"], stats["nodes"] = conn.execute(SHARDS_SQL, (name,)).fetchone()
        return stats

    def _vector_field_stats(self, conn: psycopg.Connection, vf) -> dict[str, Any]:
        index_name = sql.Identifier(self.shape.ann_index_name(vf)).as_string(conn)
        index_bytes = conn.execute(index_size_sql(self.shape), (index_name, index_name)).fetchone()[0]
        return {
            "dims": vf.dims,
            "metric": vf.metric,
            "storage": vf.storage,
            "algorithm": vf.algorithm,
            "params": vf.params,
            "model_id": vf.model_id,
            "ann_index": self.shape.ann_index_name(vf) if index_bytes is not None else None,
            "ann_index_bytes": index_bytes,
            "tuned": self.shape.spec.tuned(vf.name) or None,
        }

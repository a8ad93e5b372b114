"""An index table's definition: CREATE TABLE, columns added and dropped, keyword / browse / lookup indexes, the ANN
index builds (with their progress), renames."""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Sequence

import psycopg
from psycopg import sql

from pixsearch.config import available_cores
from pixsearch.db import Database
from pixsearch.store.schema import BROWSE_ORDER, Field, SchemaError, VectorField, default_lists
from pixsearch.store.session import set_local
from pixsearch.store.shape import TableShape
from pixsearch.store.stats import INDEX_EXISTS_SQL, TableStats

MB = 1024 * 1024
PROGRESS_COLUMNS = ("phase", "blocks_done", "blocks_total", "tuples_done", "tuples_total")
PROGRESS_LOCAL_SQL = sql.SQL("SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total"
                             " FROM pg_stat_progress_create_index WHERE relid = to_regclass(%s)")
# The coordinator of a distributed table builds nothing itself: its workers build the shards' indexes.
PROGRESS_ON_WORKERS_SQL = sql.SQL(
    "SELECT result FROM run_command_on_workers($$SELECT coalesce(json_agg(json_build_object("
    "'phase', phase, 'blocks_done', blocks_done, 'blocks_total', blocks_total, 'tuples_done', tuples_done, "
    "'tuples_total', tuples_total)), '[]') FROM pg_stat_progress_create_index$$) WHERE success"
)
INDEX_VALIDITY_SQL = sql.SQL("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                             " WHERE i.indrelid = to_regclass(%s)")
TABLE_INDEXES_SQL = sql.SQL(
    "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s")


def parallel_workers() -> int:
    """Workers besides the leader for one index build: pgvector builds HNSW in parallel; leave one core free."""
    return available_cores() - 1


def maintenance_work_mem_mb(rows: int, vf: VectorField) -> int:
    """Enough memory for the graph/lists to be built in memory (much faster), within sane bounds."""
    import psutil

    bytes_per_element = {"vector": 4, "halfvec": 2, "bit": 1 / 8}[vf.storage] * vf.dims
    # In-memory HNSW elements carry neighbour lists for layer 0 (2m) and upper layers, with pointers, beyond the
    # 6-byte on-disk TIDs: measured ~850 B per 50-d row at m=16 (pgvector warns when the graph stops fitting).
    per_row = bytes_per_element + 2 * vf.params.get("m", 16) * 16 + 300
    wanted_mb = int(rows * per_row * 1.2 / MB) + 64
    ceiling_mb = max(64, int(psutil.virtual_memory().total / MB / 4))
    return max(64, min(wanted_mb, ceiling_mb, 4096))


# -- statements ---------------------------------------------------------------------------------------------------
def _vector_column(vf: VectorField) -> sql.Composed:
    return sql.SQL("{} {}({})").format(sql.Identifier(vf.name), sql.SQL(vf.column_type), sql.Literal(vf.dims))


def create_table_sql(shape: TableShape) -> sql.Composed:
    columns = [sql.SQL("{} text PRIMARY KEY").format(shape.key)]
    columns += [sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(f.sql_type)) for f in shape.spec.fields]
    columns.append(sql.SQL("indexed_at timestamptz NOT NULL DEFAULT now()"))
    columns += [sql.SQL("{} tsvector").format(sql.Identifier(column)) for column, _ in shape.text_columns]
    columns += [_vector_column(vf) for vf in shape.spec.vector_fields]
    return sql.SQL("CREATE TABLE {} ({})").format(shape.table, sql.SQL(", ").join(columns))


def keyword_indexes_sql(shape: TableShape) -> list[sql.Composed]:
    """GIN on the full-text columns; trigram GIN on searchable single strings (partial file names)."""
    statements = [sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin ({})").format(
        sql.Identifier(shape.derived_name(column, "gin")), shape.table, sql.Identifier(column))
        for column, _ in shape.text_columns]
    statements += [sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin ({} gin_trgm_ops)").format(
        sql.Identifier(shape.derived_name(f.name, "trgm")), shape.table, sql.Identifier(f.name))
        for f in shape.searchable if f.type == "string"]
    return statements


def browse_index_sql(shape: TableShape) -> sql.Composed | None:
    """The b-tree a listing without a query reads in order (BROWSE_ORDER), for kinds that have one."""
    if shape.spec.kind not in BROWSE_ORDER:
        return None
    order = shape.browse_order(BROWSE_ORDER[shape.spec.kind])
    return sql.SQL("CREATE INDEX {} ON {} ({})").format(
        sql.Identifier(shape.derived_name("browse")), shape.table, sql.SQL(", ").join(order))


def lookup_index_sql(shape: TableShape, column: str) -> sql.Composed:
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
        sql.Identifier(shape.derived_name(column)), shape.table, sql.Identifier(column))


def ann_index_sql(shape: TableShape, vf: VectorField, lists: int | None) -> sql.Composed:
    """CREATE INDEX of a vector field's ANN index: HNSW with its m and ef_construction, IVFFlat with `lists`."""
    if vf.algorithm == "hnsw":
        with_params = {"m": vf.params["m"], "ef_construction": vf.params["ef_construction"]}
    else:
        with_params = {"lists": lists}
    options = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(int(v))) for k, v in with_params.items())
    return sql.SQL("CREATE INDEX {} ON {} USING {} ({} {}) WITH ({})").format(
        sql.Identifier(shape.ann_index_name(vf)), shape.table, sql.SQL(vf.algorithm), shape.indexed_expression(vf),
        sql.SQL(vf.opclass), options)


def drop_ann_index_sql(shape: TableShape, vf: VectorField) -> sql.Composed:
    return sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(shape.ann_index_name(vf)))


def add_columns_sql(shape: TableShape, fields: Sequence[Field], vector_fields: Sequence[VectorField]
                    ) -> list[sql.Composed]:
    """The columns of new fields and vector fields, and the keyword text columns the spec now has."""
    add = sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {}")
    columns = [sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(f.sql_type)) for f in fields]
    columns += [_vector_column(vf) for vf in vector_fields]
    columns += [sql.SQL("{} tsvector").format(sql.Identifier(column)) for column, _ in shape.text_columns]
    return [add.format(shape.table, column) for column in columns]


def drop_column_sql(shape: TableShape, name: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(shape.table, sql.Identifier(name))


def rename_table_sql(shape: TableShape, renamed: TableShape) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} RENAME TO {}").format(shape.table, renamed.table)


def rename_index_sql(old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))


def drop_table_sql(table_name: str) -> sql.Composed:
    return sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table_name))


def distribute_sql(shards: int | None) -> sql.SQL:
    """Shard a table (parameters: its name, its distribution column, and the shard count unless Citus' default)."""
    if shards:
        return sql.SQL("SELECT create_distributed_table(%s, %s, shard_count => %s)")
    return sql.SQL("SELECT create_distributed_table(%s, %s)")


def lock_against_writes_sql(shape: TableShape) -> sql.Composed:
    """Writes wait, searches go on (a definition change checking the rows first)."""
    return sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(shape.table)


def build_settings(rows: int, vf: VectorField, mem_mb: int | None = None, workers: int | None = None
                   ) -> dict[str, Any]:
    """What one ANN index build runs with: memory for building in memory (mem_mb: this machine's choice for `rows`
    unless given), parallel workers (this machine's unless given)."""
    return {"maintenance_work_mem": f"{mem_mb or maintenance_work_mem_mb(rows, vf)}MB",
            "max_parallel_maintenance_workers": parallel_workers() if workers is None else workers}


def build_lists(shape: TableShape, vf: VectorField, rows: int) -> int | None:
    """IVFFlat's list count for `rows` rows (None for HNSW); an empty table cannot have IVFFlat centroids."""
    if vf.algorithm != "ivfflat":
        return None
    if rows == 0:
        raise SchemaError(
            f"cannot build the IVFFlat index of {shape.spec.name!r}.{vf.name}: the table is empty. IVFFlat "
            "learns its list centroids from the data, so an index built now would be useless. Add vectors "
            f"first, then run: pixsearch indexes rebuild {shape.spec.name}"
        )
    return min(vf.params.get("lists") or default_lists(rows), rows)


# -- execution ----------------------------------------------------------------------------------------------------
class TableDefinition:
    def __init__(self, shape: TableShape):
        self.shape = shape

    def exists(self, conn: psycopg.Connection) -> bool:
        return conn.execute(INDEX_EXISTS_SQL, (self.shape.table.as_string(conn),)).fetchone()[0] is not None

    def create(self, conn: psycopg.Connection) -> None:
        """The table, its keyword, browse and lookup indexes, and the HNSW indexes (IVFFlat needs data for its
        centroids: built by build_index later)."""
        conn.execute(create_table_sql(self.shape))
        self.create_keyword_indexes(conn)
        browse = browse_index_sql(self.shape)
        if browse is not None:
            conn.execute(browse)
        self.create_lookup_indexes(conn)
        for vf in self.shape.spec.vector_fields:
            if vf.algorithm == "hnsw":
                conn.execute(ann_index_sql(self.shape, vf, lists=None))

    def create_keyword_indexes(self, conn: psycopg.Connection) -> None:
        for statement in keyword_indexes_sql(self.shape):
            conn.execute(statement)

    def create_lookup_indexes(self, conn: psycopg.Connection) -> None:
        """The b-trees of LOOKUP_COLUMNS (IF NOT EXISTS: tables made before they existed get them too). Only
        missing ones are created: CREATE INDEX waits on writers even when the index exists."""
        for column in self.shape.lookup_columns():
            name = sql.Identifier(self.shape.derived_name(column)).as_string(conn)
            if conn.execute(INDEX_EXISTS_SQL, (name,)).fetchone()[0] is None:
                conn.execute(lookup_index_sql(self.shape, column))

    def add_columns(self, conn: psycopg.Connection, fields: Sequence[Field], vector_fields: Sequence[VectorField]
                    ) -> None:
        """Add metadata and vector columns (a re-index adds the new model's); the shape's spec must already include
        them. ANN indexes of the new vector fields are built later, once they are filled (build_index)."""
        for statement in add_columns_sql(self.shape, fields, vector_fields):
            conn.execute(statement)
        self.create_keyword_indexes(conn)

    def drop_columns(self, conn: psycopg.Connection, names: Sequence[str]) -> None:
        """Drop columns (and with them their indexes): the vector fields of a model an index no longer uses."""
        for name in names:
            conn.execute(drop_column_sql(self.shape, name))

    def lock_against_writes(self, conn: psycopg.Connection) -> None:
        conn.execute(lock_against_writes_sql(self.shape))

    # -- ANN indexes -------------------------------------------------------------------------------------------------
    def ann_indexes_ready(self, conn: psycopg.Connection) -> dict[str, bool]:
        """For each ANN-indexed vector field: whether its index exists and is valid (a killed CREATE INDEX
        CONCURRENTLY leaves an invalid one)."""
        valid = dict(conn.execute(INDEX_VALIDITY_SQL, (self.shape.table.as_string(conn),)).fetchall())
        return {vf.name: bool(valid.get(self.shape.ann_index_name(vf))) for vf in self.shape.spec.vector_fields
                if vf.algorithm != "exact"}

    def ann_index_exists(self, conn: psycopg.Connection, vf: VectorField) -> bool:
        name = sql.Identifier(self.shape.ann_index_name(vf)).as_string(conn)
        return conn.execute(INDEX_EXISTS_SQL, (name,)).fetchone()[0] is not None

    def drop_ann_index(self, conn: psycopg.Connection, vf: VectorField) -> bool:
        """Drop the ANN index of one vector field if it exists; returns whether it did. build_index makes it again."""
        existed = self.ann_index_exists(conn, vf)
        conn.execute(drop_ann_index_sql(self.shape, vf))
        return existed

    def build_index(self, db: Database, vf: VectorField, *, progress: Callable[[dict[str, Any]], None] | None = None,
                    memory_mb: int | None = None) -> dict[str, Any]:
        """(Re)build the ANN index of one vector field, in a transaction of its own. Returns what was built (lists,
        rows, seconds, memory)."""
        if vf.algorithm == "exact":
            raise SchemaError(f"vector field {vf.name!r} uses exact search: it has no ANN index to build")
        with db.connection() as conn:
            rows = TableStats(self.shape).count(conn)
        lists = build_lists(self.shape, vf, rows)
        settings = build_settings(rows, vf, memory_mb)
        stop = threading.Event()
        watcher = None
        if progress is not None:
            watcher = threading.Thread(target=self._watch_build, args=(db, progress, stop), daemon=True)
            watcher.start()
        started = time.perf_counter()
        try:
            with db.connection() as conn, conn.transaction():
                set_local(conn, settings, propagate=self.shape.distributed)
                conn.execute(drop_ann_index_sql(self.shape, vf))
                conn.execute(ann_index_sql(self.shape, vf, lists))
        finally:
            stop.set()
            if watcher is not None:
                watcher.join(timeout=5)
        return {"field": vf.name, "algorithm": vf.algorithm, "rows": rows, "lists": lists,
                "seconds": round(time.perf_counter() - started, 3),
                "maintenance_work_mem_mb": int(settings["maintenance_work_mem"].removesuffix("MB"))}

    def _watch_build(self, db: Database, progress: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
        """Report this table's build progress every half second (from the workers when distributed), on a
        connection of its own outside the pool (the build holds one pool connection for minutes)."""
        try:
            with psycopg.connect(db.conninfo, autocommit=True) as conn:
                while not stop.wait(0.5):
                    current = self.build_progress(conn)
                    if current:
                        progress(current)
        except (psycopg.Error, ValueError):
            pass  # progress is a nicety; the build itself reports real errors

    def build_progress(self, conn: psycopg.Connection) -> dict[str, Any] | None:
        """The running CREATE INDEX of this table (summed over the workers' shards when distributed), or None."""
        if self.shape.distributed:
            builds = [b for (result,) in conn.execute(PROGRESS_ON_WORKERS_SQL) for b in json.loads(result)]
        else:
            row = conn.execute(PROGRESS_LOCAL_SQL, (self.shape.table.as_string(conn),)).fetchone()
            builds = [dict(zip(PROGRESS_COLUMNS, row))] if row else []
        if not builds:
            return None
        summed = {c: sum(b[c] or 0 for b in builds) for c in PROGRESS_COLUMNS[1:]}
        return {"phase": builds[0]["phase"], **summed}

    def rename_to(self, conn: psycopg.Connection, renamed: TableShape) -> None:
        """Rename the table and every index named after it (ANN, keyword, browse, primary key): a later index
        created under the old name must not find those names taken."""
        conn.execute(rename_table_sql(self.shape, renamed))
        existing = {row[0] for row in conn.execute(TABLE_INDEXES_SQL, (renamed.spec.table_name,))}
        moves = list(zip(self.shape.derived_names(), renamed.derived_names()))
        moves.append((f"{self.shape.spec.table_name}_pkey", f"{renamed.spec.table_name}_pkey"))
        for old, new in moves:
            if old in existing and old != new:
                conn.execute(rename_index_sql(old, new))

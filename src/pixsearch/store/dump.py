"""What a backup and a restore need of the database besides pg_dump/pg_restore (db/dump.py): one snapshot to read
pixsearch's tables, their rows (binary COPY), the registry rows and schema version from; loading rows back; and
setting the tables a restore replaces aside — in a schema of their own, whole (indexes, constraints), so a failed
restore brings them back as they were."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pixsearch.db import Database
from pixsearch.store.faces import people_table_name
from pixsearch.store.regions import region_spec
from pixsearch.store.registry import MIGRATIONS, get_index
from pixsearch.store.schema import IndexSpec

# Every table pixsearch makes is named so: its own tables, and the tables of indexes (schema.table_name_for).
_TABLES_LIKE = ("pixsearch\\_%", "px\\_%")
ASIDE_SCHEMA = "pixsearch_replaced"
REGISTRY_COLUMNS = ("name", "table_name", "key_field", "vector_fields", "settings", "kind", "fields", "model",
                    "created_at", "updated_at")
_JSON_COLUMNS = ("vector_fields", "settings", "fields")


def latest_schema_version() -> int:
    """The schema version this release makes: its last migration's number."""
    return max(version for version, _ in MIGRATIONS)


def schema_version(db: Database) -> int:
    """The schema version of the database (the last migration applied to it); 0 before any."""
    with db.connection() as conn:
        return _schema_version(conn)


def _schema_version(conn: psycopg.Connection) -> int:
    if conn.execute("SELECT to_regclass('pixsearch_migrations')").fetchone()[0] is None:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM pixsearch_migrations").fetchone()[0]


def _pixsearch_tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                        " AND (tablename LIKE %s OR tablename LIKE %s) ORDER BY tablename", _TABLES_LIKE)
    return [row[0] for row in rows]


def _index_tables(conn: psycopg.Connection, spec: IndexSpec) -> list[str]:
    children = [region_spec(spec).table_name, people_table_name(spec.table_name)]
    return [spec.table_name] + [name for name in children
                                if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(name).as_string(conn),)
                                                ).fetchone()[0]]


def pixsearch_tables(db: Database) -> list[str]:
    """Every table of pixsearch in the current schema (a Citus coordinator lists its distributed tables, not their
    shards)."""
    with db.connection() as conn:
        return _pixsearch_tables(conn)


def index_tables(db: Database, name: str) -> list[str]:
    """The tables of one index: its own, and its regions' and people's when it has them."""
    spec = get_index(db, name)
    with db.connection() as conn:
        return _index_tables(conn, spec)


class Snapshot:
    """Everything a backup reads, from one REPEATABLE READ transaction whose snapshot is exported for pg_dump
    (`id`): the dump, the rows copied in binary and the manifest's facts all show the same moment."""

    def __init__(self, conn: psycopg.Connection, snapshot_id: str):
        self.conn, self.id = conn, snapshot_id

    def tables(self, index: IndexSpec | None = None) -> list[str]:
        """Every pixsearch table, or those of one index."""
        return _index_tables(self.conn, index) if index is not None else _pixsearch_tables(self.conn)

    def schema_version(self) -> int:
        return _schema_version(self.conn)

    def active_keys(self) -> int:
        return self.conn.execute("SELECT count(*) FROM pixsearch_api_keys WHERE revoked_at IS NULL").fetchone()[0]

    def registry_rows(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The registry entries (all, or of `names`) as JSON-ready dicts: what a manifest shows of its indexes,
        and what a one-index restore registers again."""
        query = sql.SQL("SELECT {} FROM pixsearch_indexes WHERE %s::text[] IS NULL OR name = ANY(%s) ORDER BY name"
                        ).format(sql.SQL(", ").join(map(sql.Identifier, REGISTRY_COLUMNS)))
        names = list(names) if names is not None else None
        return [{column: value.isoformat() if isinstance(value, datetime) else value
                 for column, value in zip(REGISTRY_COLUMNS, row)}
                for row in self.conn.execute(query, (names, names))]

    def distributed(self, tables: Sequence[str]) -> list[str]:
        """Those of `tables` that Citus distributes (their rows are in the workers' shards: pg_dump on the
        coordinator does not see them, the binary copies through the coordinator do)."""
        if self.conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is None:
            return []
        rows = self.conn.execute("SELECT logicalrelid::regclass::text FROM pg_dist_partition")
        distributed = {row[0].strip('"') for row in rows}
        return [table for table in tables if table in distributed]

    def copy_rows_out(self, table: str, path: Path) -> dict[str, Any]:
        """Every row of `table` into `path` in COPY's binary format; its columns (generated ones left out: COPY
        cannot write them back) and row count."""
        columns = [row[0] for row in self.conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
            " AND attgenerated = '' ORDER BY attnum", (sql.Identifier(table).as_string(self.conn),))]
        query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table))
        with self.conn.cursor() as cursor, path.open("wb") as out:
            with cursor.copy(query) as copy:
                for chunk in copy:
                    out.write(chunk)
            rows = cursor.rowcount
        return {"columns": columns, "rows": rows}


@contextmanager
def snapshot(db: Database) -> Iterator[Snapshot]:
    """A Snapshot, held (with its pool connection) until the block ends."""
    with db.connection() as conn:
        conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
        try:
            with conn.transaction():
                yield Snapshot(conn, conn.execute("SELECT pg_export_snapshot()").fetchone()[0])
        finally:
            conn.isolation_level, conn.read_only = None, None


def copy_rows_in(db: Database, table: str, path: Path, columns: Sequence[str]) -> None:
    """Load rows written by Snapshot.copy_rows_out into `table`, in one transaction."""
    query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
    with db.connection() as conn, conn.transaction(), conn.cursor() as cursor, cursor.copy(query) as copy, \
            path.open("rb") as source:
        while chunk := source.read(1 << 20):
            copy.write(chunk)


def register(db: Database, row: dict[str, Any]) -> None:
    """Put a registry entry (as registry_rows gives it) back: restoring one index's backup."""
    columns = [column for column in REGISTRY_COLUMNS if column in row]
    values = [Jsonb(row[c]) if c in _JSON_COLUMNS else row[c] for c in columns]
    query = sql.SQL("INSERT INTO pixsearch_indexes ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(columns)))
    with db.connection() as conn, conn.transaction():
        conn.execute(query, values)


def contents(db: Database) -> tuple[list[str], int]:
    """What the database holds of pixsearch that a restore would replace: index names and active API keys."""
    with db.connection() as conn:
        names: list[str] = []
        if conn.execute("SELECT to_regclass('pixsearch_indexes')").fetchone()[0] is not None:
            names = [row[0] for row in conn.execute("SELECT name FROM pixsearch_indexes ORDER BY name")]
        keys = 0
        if conn.execute("SELECT to_regclass('pixsearch_api_keys')").fetchone()[0] is not None:
            keys = conn.execute("SELECT count(*) FROM pixsearch_api_keys WHERE revoked_at IS NULL").fetchone()[0]
    return names, keys


def set_aside(db: Database, tables: Sequence[str], registry_name: str | None = None) -> None:
    """Move `tables` (with their indexes and constraints) into the schema ASIDE_SCHEMA, out of the restore's way,
    in one transaction; with `registry_name`, that index's registry entry goes there too."""
    aside = sql.Identifier(ASIDE_SCHEMA)
    with db.connection() as conn, conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(aside))  # a crashed restore's leftovers
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(aside))
        if registry_name is not None:
            conn.execute(sql.SQL("CREATE TABLE {}.registry AS SELECT * FROM pixsearch_indexes WHERE name = %s")
                         .format(aside), (registry_name,))
            conn.execute("DELETE FROM pixsearch_indexes WHERE name = %s", (registry_name,))
        for table in tables:
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier(table), aside))


def bring_back(db: Database, tables: Sequence[str], *, dropped: Sequence[str] = (),
              registry_name: str | None = None) -> None:
    """Undo set_aside after a failed restore: the tables the restore made (`dropped`, and any of `tables`) go, and
    the tables set aside return."""
    aside = sql.Identifier(ASIDE_SCHEMA)
    with db.connection() as conn, conn.transaction():
        for table in sorted(set(tables) | set(dropped)):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table)))
        for table in tables:
            conn.execute(sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                aside, sql.Identifier(table), sql.Identifier(conn.execute("SELECT current_schema()").fetchone()[0])))
        if registry_name is not None:
            conn.execute("DELETE FROM pixsearch_indexes WHERE name = %s", (registry_name,))
            conn.execute(sql.SQL("INSERT INTO pixsearch_indexes SELECT * FROM {}.registry").format(aside))
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(aside))


def drop_set_aside(db: Database) -> None:
    """After a restore that succeeded: the replaced tables go."""
    with db.connection() as conn, conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(ASIDE_SCHEMA)))


def clear_distribution(db: Database, name: str) -> None:
    """An index restored as a local table (its backup was of a Citus cluster, the target is one server): its
    registry entry no longer says it is distributed."""
    with db.connection() as conn, conn.transaction():
        conn.execute("UPDATE pixsearch_indexes SET settings = settings - 'distribution' WHERE name = %s", (name,))

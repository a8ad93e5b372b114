"""What a backup and a restore need of the database besides pg_dump/pg_restore (db/dump.py): which tables are
pixsearch's, the registry rows and schema version to record, and setting the tables a restore replaces aside — in
a schema of their own, whole (indexes, constraints), so a failed restore brings them back as they were."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from psycopg import sql
from psycopg.types.json import Jsonb

from pixsearch.db import Database
from pixsearch.store.regions import region_spec
from pixsearch.store.registry import MIGRATIONS, get_index

# Every table pixsearch makes is named so: its own tables, and the tables of indexes (schema.table_name_for).
TABLE_PATTERNS = ("pixsearch_*", "px_*")
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
        if conn.execute("SELECT to_regclass('pixsearch_migrations')").fetchone()[0] is None:
            return 0
        return conn.execute("SELECT coalesce(max(version), 0) FROM pixsearch_migrations").fetchone()[0]


def index_tables(db: Database, name: str) -> list[str]:
    """The tables of one index: its own, and its regions' when it has them."""
    spec = get_index(db, name)
    regions = region_spec(spec).table_name
    with db.connection() as conn:
        has_regions = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(regions).as_string(conn),)).fetchone()[0]
    return [spec.table_name] + ([regions] if has_regions else [])


def pixsearch_tables(db: Database) -> list[str]:
    """Every table of pixsearch in the current schema (a Citus coordinator lists its distributed tables, not their
    shards)."""
    with db.connection() as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                            " AND (tablename LIKE %s OR tablename LIKE %s) ORDER BY tablename", _TABLES_LIKE)
        return [row[0] for row in rows]


def distributed_tables(db: Database, tables: Sequence[str]) -> list[str]:
    """Those of `tables` that Citus distributes: their rows live in the workers' shards, which pg_dump on the
    coordinator does not see, so a backup copies them through the coordinator."""
    with db.connection() as conn:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is None:
            return []
        rows = conn.execute("SELECT logicalrelid::regclass::text FROM pg_dist_partition")
        distributed = {row[0].strip('"') for row in rows}
    return [table for table in tables if table in distributed]


def copy_rows_out(db: Database, table: str, path: Path) -> int:
    """Every row of `table` into `path` (COPY's binary format, through the coordinator on Citus); the bytes."""
    written = 0
    query = sql.SQL("COPY (SELECT * FROM {}) TO STDOUT (FORMAT binary)").format(sql.Identifier(table))
    with db.connection() as conn, conn.cursor().copy(query) as copy, path.open("wb") as out:
        for chunk in copy:
            out.write(chunk)
            written += len(chunk)
    return written


def copy_rows_in(db: Database, table: str, path: Path) -> None:
    query = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(sql.Identifier(table))
    with db.connection() as conn, conn.transaction(), conn.cursor().copy(query) as copy, path.open("rb") as source:
        while chunk := source.read(1 << 20):
            copy.write(chunk)


def registry_rows(db: Database, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The registry entries (all, or of `names`) as JSON-ready dicts: what a backup's manifest shows of its indexes."""
    query = sql.SQL("SELECT {} FROM pixsearch_indexes").format(sql.SQL(", ").join(map(sql.Identifier,
                                                                                      REGISTRY_COLUMNS)))
    with db.connection() as conn:
        if names is not None:
            rows = conn.execute(query + sql.SQL(" WHERE name = ANY(%s) ORDER BY name"), (list(names),))
        else:
            rows = conn.execute(query + sql.SQL(" ORDER BY name"))
        return [{column: value.isoformat() if isinstance(value, datetime) else value
                 for column, value in zip(REGISTRY_COLUMNS, row)} for row in rows]


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

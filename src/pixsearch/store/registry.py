"""Schema migrations and the registry of named indexes (their fields, vector fields and models)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from pixsearch.db import Database

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS pixsearch_indexes (
            name text PRIMARY KEY,
            table_name text NOT NULL,
            key_field text NOT NULL,
            vector_fields jsonb NOT NULL,
            settings jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """,
    ),
]

INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
# Metric -> (pgvector operator class, distance operator) for float vectors; the query operator must match the
# operator class or the planner cannot use the ANN index.
METRICS = {
    "cosine": ("vector_cosine_ops", "<=>"),
    "ip": ("vector_ip_ops", "<#>"),
    "l2": ("vector_l2_ops", "<->"),
}


class IndexNotFoundError(LookupError):
    pass


class IndexExistsError(ValueError):
    pass


@dataclass(frozen=True)
class VectorField:
    name: str
    dims: int
    model_id: str
    metric: str = "cosine"
    storage: str = "vector"
    algorithm: str = "hnsw"
    params: dict[str, Any] = field(default_factory=lambda: {"m": 16, "ef_construction": 64})

    @property
    def opclass(self) -> str:
        return METRICS[self.metric][0]

    @property
    def operator(self) -> str:
        return METRICS[self.metric][1]


@dataclass(frozen=True)
class IndexSpec:
    name: str
    table_name: str
    vector_fields: tuple[VectorField, ...]
    key_field: str = "id"
    settings: dict[str, Any] = field(default_factory=dict)

    def vector_field(self, name: str) -> VectorField:
        for vf in self.vector_fields:
            if vf.name == name:
                return vf
        raise KeyError(f"index {self.name!r} has no vector field {name!r}")


def validate_index_name(name: str) -> str:
    if not INDEX_NAME.match(name):
        raise ValueError(
            f"invalid index name {name!r}: use 1-40 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


def migrate(db: Database) -> None:
    """Apply pending schema migrations, serialised by an advisory lock so concurrent first runs do not race."""
    with db.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pixsearch_migrations'))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pixsearch_migrations ("
            " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM pixsearch_migrations")}
        for version, statement in MIGRATIONS:
            if version not in applied:
                conn.execute(statement)
                conn.execute("INSERT INTO pixsearch_migrations (version) VALUES (%s)", (version,))


def _spec_from_row(row: tuple) -> IndexSpec:
    name, table_name, key_field, vector_fields, settings = row
    return IndexSpec(
        name=name,
        table_name=table_name,
        key_field=key_field,
        vector_fields=tuple(VectorField(**vf) for vf in vector_fields),
        settings=settings,
    )


_SELECT = "SELECT name, table_name, key_field, vector_fields, settings FROM pixsearch_indexes"


def get_index(db: Database, name: str) -> IndexSpec:
    with db.connection() as conn:
        row = conn.execute(_SELECT + " WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise IndexNotFoundError(f"no index named {name!r}")
    return _spec_from_row(row)


def list_indexes(db: Database) -> list[IndexSpec]:
    with db.connection() as conn:
        return [_spec_from_row(row) for row in conn.execute(_SELECT + " ORDER BY name")]


def create_index(db: Database, name: str, vector_fields: list[VectorField]) -> IndexSpec:
    """Register an index and create its table and ANN indexes in one transaction."""
    from pixsearch.store.photos import PhotoTable

    validate_index_name(name)
    for vf in vector_fields:
        if not FIELD_NAME.match(vf.name) or vf.name in PhotoTable.BUILTIN_COLUMNS:
            raise ValueError(f"invalid vector field name {vf.name!r}")
        if vf.metric not in METRICS:
            raise ValueError(f"unknown metric {vf.metric!r}; known: {', '.join(METRICS)}")
    spec = IndexSpec(name=name, table_name="px_" + name.replace("-", "_"), vector_fields=tuple(vector_fields))
    with db.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pixsearch_indexes'))")
        exists = conn.execute("SELECT 1 FROM pixsearch_indexes WHERE name = %s", (name,)).fetchone()
        if exists:
            raise IndexExistsError(f"index {name!r} already exists")
        conn.execute(
            "INSERT INTO pixsearch_indexes (name, table_name, key_field, vector_fields, settings)"
            " VALUES (%s, %s, %s, %s, %s)",
            (name, spec.table_name, spec.key_field, Jsonb([asdict(vf) for vf in vector_fields]), Jsonb({})),
        )
        PhotoTable(spec).create(conn)
    return spec


def delete_index(db: Database, name: str) -> None:
    spec = get_index(db, name)
    with db.connection() as conn, conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(spec.table_name)))
        conn.execute("DELETE FROM pixsearch_indexes WHERE name = %s", (name,))

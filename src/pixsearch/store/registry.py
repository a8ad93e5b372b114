"""Schema migrations and the registry of named indexes (key, fields, vector fields and models, settings)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Collection, Sequence

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pixsearch.db import Database, DatabaseError
from pixsearch.store.schema import PHOTO_FIELDS, Field, IndexSpec, SchemaError, VectorField, table_name_for

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
    (
        2,
        """
        ALTER TABLE pixsearch_indexes
            ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'photos',
            ADD COLUMN IF NOT EXISTS fields jsonb NOT NULL DEFAULT '[]'::jsonb
        """,
    ),
    (
        3,
        """
        CREATE TABLE IF NOT EXISTS pixsearch_api_keys (
            id text PRIMARY KEY,
            key_hash text NOT NULL UNIQUE,
            role text NOT NULL CHECK (role IN ('admin', 'query')),
            name text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        )
        """,
    ),
    (
        4,
        # photo tables made before listings had their b-tree index (definition.py makes it for new ones)
        """
        DO $$
        DECLARE t text;
        BEGIN
            FOR t IN SELECT table_name FROM pixsearch_indexes WHERE kind = 'photos' LOOP
                EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (taken_at DESC NULLS LAST, indexed_at DESC, id)',
                               t || '_browse', t);
            END LOOP;
        END $$
        """,
    ),
    (
        5,
        # An index records the model that fills it (registry name: offline, clip:..., open_clip:...), so searching
        # or adding to it loads that model. Every modelled index before this was made by the offline model.
        """
        ALTER TABLE pixsearch_indexes ADD COLUMN IF NOT EXISTS model text;
        UPDATE pixsearch_indexes SET model = 'offline'
            WHERE model IS NULL AND jsonb_path_exists(vector_fields, '$[*] ? (@.model_id != null)')
        """,
    ),
    (
        6,
        # Captions bought from a vision LLM, by captioner settings and the photo's content hash (store/generated.py):
        # shared by every index, so no photo is captioned twice for the same settings. `refusal`: the model answered
        # but gave no caption (also bought once).
        """
        CREATE TABLE IF NOT EXISTS pixsearch_generated_captions (
            settings_id text NOT NULL,
            content_hash text NOT NULL,
            captioner text NOT NULL,
            title text,
            description text,
            keywords text[] NOT NULL DEFAULT '{}',
            refusal text,
            prompt_tokens integer NOT NULL DEFAULT 0,
            completion_tokens integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (settings_id, content_hash)
        )
        """,
    ),
]


class IndexNotFoundError(LookupError):
    def __str__(self) -> str:  # LookupError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class IndexExistsError(ValueError):
    pass


class SchemaTooNewError(DatabaseError):
    """The database was brought to a schema version this release does not know (by a newer release)."""


def migrate(db: Database) -> None:
    """Apply pending schema migrations, each once (pixsearch_migrations records it), all of them in one
    transaction (a failure applies none), serialised by an advisory lock so concurrent first runs do not race. Every
    process runs this when it opens the database (Engine.db), so a new release upgrades the schema at its start.
    A database at a schema version newer than this release's is refused: its code would misread it."""
    with db.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pixsearch_migrations'))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pixsearch_migrations ("
            " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM pixsearch_migrations")}
        latest = max(version for version, _ in MIGRATIONS)
        if applied and max(applied) > latest:
            raise SchemaTooNewError(
                f"this database was upgraded by a newer pixsearch release (schema version {max(applied)}; this "
                f"release knows up to {latest}): run that release (pip install -U pixsearch), or restore a backup "
                f"made with this one into a fresh PIXSEARCH_HOME"
            )
        for version, statement in MIGRATIONS:
            if version not in applied:
                conn.execute(statement)
                conn.execute("INSERT INTO pixsearch_migrations (version) VALUES (%s)", (version,))


_SELECT = "SELECT name, table_name, key_field, vector_fields, settings, kind, fields, model FROM pixsearch_indexes"
# The fields photo indexes had before an index recorded its fields: the system fields and the offline model's.
_LEGACY_PHOTO_FIELDS = PHOTO_FIELDS + (
    Field("class_ids", "int[]", retrievable=False),
    Field("class_probs", "float[]", retrievable=False),
    Field("tags", "string[]", filterable=True, facetable=True, searchable=True),
)


def _spec_from_row(row: tuple) -> IndexSpec:
    name, table_name, key_field, vector_fields, settings, kind, fields, model = row
    if kind == "photos" and not fields:
        parsed_fields = _LEGACY_PHOTO_FIELDS
    else:
        parsed_fields = tuple(Field(**f) for f in fields)
    return IndexSpec(
        name=name,
        table_name=table_name,
        key_field=key_field,
        vector_fields=tuple(VectorField(**vf) for vf in vector_fields),
        fields=parsed_fields,
        kind=kind,
        settings=settings,
        model=model,
    )


def get_index(db: Database, name: str) -> IndexSpec:
    with db.connection() as conn:
        row = conn.execute(_SELECT + " WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise IndexNotFoundError(f"no index named {name!r}")
    return _spec_from_row(row)


def read_settings(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    """The index's settings (tuned search knobs, ANN builds, a bulk load under way) as `conn`'s transaction sees
    them: a search reads them in its snapshot. A prepared statement, as every search runs it."""
    row = conn.execute("SELECT settings FROM pixsearch_indexes WHERE name = %s", (name,), prepare=True).fetchone()
    if row is None:
        raise IndexNotFoundError(f"no index named {name!r}")
    return row[0]


def list_indexes(db: Database) -> list[IndexSpec]:
    with db.connection() as conn:
        return [_spec_from_row(row) for row in conn.execute(_SELECT + " ORDER BY name")]


def create_index(
    db: Database,
    name: str,
    vector_fields: list[VectorField],
    fields: tuple[Field, ...] | list[Field] = (),
    *,
    kind: str = "documents",
    key_field: str = "id",
    model: str | None = None,
    shards: int | None = None,
) -> IndexSpec:
    """Register an index and create its table (and the ANN indexes that can be built empty) in one transaction.
    With `shards` (0: Citus' default count) the table is distributed across the Citus workers by its key."""
    from pixsearch.store.definition import TableDefinition
    from pixsearch.store.shape import TableShape

    spec = IndexSpec(
        name=name,
        table_name=table_name_for(name),
        vector_fields=tuple(vector_fields),
        fields=tuple(fields),
        key_field=key_field,
        kind=kind,
        model=model,
        settings={"distribution": {"column": key_field, "shards": shards or None}} if shards is not None else {},
    )
    spec.validate()
    with db.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pixsearch_indexes'))")
        _check_free(conn, name, spec.table_name)
        conn.execute(
            "INSERT INTO pixsearch_indexes (name, table_name, key_field, vector_fields, settings, kind, fields, model)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                name,
                spec.table_name,
                spec.key_field,
                Jsonb([vf.to_json() for vf in spec.vector_fields]),
                Jsonb(spec.settings),
                kind,
                Jsonb([asdict(f) for f in spec.fields]),
                model,
            ),
        )
        TableDefinition(TableShape(spec)).create(conn)
        if shards is not None:
            _distribute(conn, spec, shards)
    return spec


class NotCitusError(SchemaError):
    """Distribution was asked of a server that is not a Citus coordinator."""


def _distribute(conn, spec: IndexSpec, shards: int) -> None:
    """create_distributed_table on the key: Citus shards the table across the workers, creates every index of the
    table (ANN, keyword, browse) on every shard, and moves rows already there into the shards."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is None:
        raise NotCitusError(
            "this PostgreSQL server has no Citus extension: distributing an index needs a Citus coordinator "
            "(see docs/citus.md); on one server, indexes stay local"
        )
    from pixsearch.store.definition import distribute_sql

    table = sql.Identifier(spec.table_name).as_string(conn)
    conn.execute(distribute_sql(shards), (table, spec.key_field, *([shards] if shards else [])))


def distribute_index(db: Database, name: str, shards: int = 0) -> IndexSpec:
    """Distribute an existing index's table across the Citus workers by its key, its rows moved into the shards
    (and its regions' table with it, colocated: a photo and its regions stay on one shard). Every index of the
    tables is created on every shard by Citus. In one transaction: all of it or nothing."""
    from pixsearch.store.regions import DISTRIBUTE_SQL, PHOTO_KEY, RegionTable, foreign_key_sql

    spec = get_index(db, name)
    with db.connection() as conn, conn.transaction():
        citus = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is not None
        table = sql.Identifier(spec.table_name).as_string(conn)
        if citus and conn.execute("SELECT 1 FROM pg_dist_partition WHERE logicalrelid = %s::regclass",
                                  (table,)).fetchone():
            # Citus' own catalog decides: a restored dump records distribution in the registry but not here.
            raise SchemaError(f"index {name!r} is already distributed")
        regions = RegionTable(spec)
        child = regions.parts.shape if citus and regions.exists(conn) else None
        if child is not None:  # Citus distributes a table referenced by a foreign key only with its referencing one
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                child.table, sql.Identifier(child.derived_name("photo", "fk"))))
        _distribute(conn, spec, shards)
        # create_distributed_table copied the rows into the shards; the coordinator's own copy is now dead weight
        conn.execute("SELECT truncate_local_data_after_distributing_table(%s)", (table,))
        if child is not None:
            conn.execute(DISTRIBUTE_SQL, (child.table.as_string(conn), PHOTO_KEY, table))
            conn.execute("SELECT truncate_local_data_after_distributing_table(%s)", (child.table.as_string(conn),))
            conn.execute(foreign_key_sql(child, spec))
        shard_count = conn.execute("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = %s::regclass",
                                   (table,)).fetchone()[0]
    return update_settings(db, name, {"distribution": {"column": spec.key_field, "shards": shard_count}})


def _check_free(conn, name: str, table_name: str) -> None:
    """No index may take a name in use, nor one whose table name is taken: `a-b` and `a_b` share a table name."""
    if conn.execute("SELECT 1 FROM pixsearch_indexes WHERE name = %s", (name,)).fetchone():
        raise IndexExistsError(f"index {name!r} already exists")
    row = conn.execute("SELECT name FROM pixsearch_indexes WHERE table_name = %s", (table_name,)).fetchone()
    if row is not None:
        raise IndexExistsError(
            f"index name {name!r} would use the table {table_name!r} of index {row[0]!r} ('-' and '_' are the "
            "same in table names): choose another name"
        )
    if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(table_name).as_string(conn),)).fetchone()[0]:
        raise IndexExistsError(f"index name {name!r} would use the table {table_name!r}, which already exists")


def delete_index(db: Database, name: str) -> None:
    """Drop the index's table (with its ANN indexes), its regions' table, and its registry row; nothing else."""
    from pixsearch.store.definition import drop_table_sql
    from pixsearch.store.faces import people_table_name
    from pixsearch.store.regions import region_spec

    spec = get_index(db, name)
    with db.connection() as conn, conn.transaction():
        conn.execute(drop_table_sql(region_spec(spec).table_name))
        conn.execute(drop_table_sql(people_table_name(spec.table_name)))
        conn.execute(drop_table_sql(spec.table_name))
        conn.execute("DELETE FROM pixsearch_indexes WHERE name = %s", (name,))


def rename_index(db: Database, name: str, new_name: str) -> IndexSpec:
    from pixsearch.store.definition import TableDefinition
    from pixsearch.store.faces import people_table_name
    from pixsearch.store.regions import RegionTable
    from pixsearch.store.shape import TableShape

    spec = get_index(db, name)
    renamed = IndexSpec(
        name=new_name,
        table_name=table_name_for(new_name),
        vector_fields=spec.vector_fields,
        fields=spec.fields,
        key_field=spec.key_field,
        kind=spec.kind,
        settings=spec.settings,
        model=spec.model,
    )
    renamed.validate()
    with db.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pixsearch_indexes'))")
        _check_free(conn, new_name, renamed.table_name)
        TableDefinition(TableShape(spec)).rename_to(conn, TableShape(renamed))
        regions = RegionTable(spec)
        if regions.exists(conn):
            regions.rename_to(conn, renamed)
        people = sql.Identifier(people_table_name(spec.table_name))
        if conn.execute("SELECT to_regclass(%s)", (people.as_string(conn),)).fetchone()[0] is not None:
            conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                people, sql.Identifier(people_table_name(renamed.table_name))))
        conn.execute(
            "UPDATE pixsearch_indexes SET name = %s, table_name = %s, updated_at = now() WHERE name = %s",
            (new_name, renamed.table_name, name),
        )
    return renamed


class RowsStillEmpty(Exception):
    """A definition change that needs every row filled found rows still empty (see change_definition)."""


def change_definition(
    db: Database,
    name: str,
    *,
    vector_fields: tuple[VectorField, ...],
    fields: tuple[Field, ...],
    model: str | None,
    settings_changes: dict[str, Any] | None = None,
    add: tuple[tuple[Field, ...], tuple[VectorField, ...]] = ((), ()),
    drop: tuple[str, ...] = (),
    require_filled: tuple[Sequence[str], Collection[str]] | None = None,
) -> IndexSpec:
    """Change what an index holds in one transaction: its registry entry (vector fields, fields, model, settings) and
    its table (columns added or dropped). With require_filled=(columns, excused), the table is first locked against
    writes (searches go on) and the change is made only if no row but the excused keys has one of `columns` empty;
    else RowsStillEmpty is raised and nothing changes."""
    from pixsearch.store.definition import TableDefinition
    from pixsearch.store.queries import TableQueries
    from pixsearch.store.shape import TableShape

    current = get_index(db, name)
    settings = _merged(current.settings, settings_changes or {})
    changed = IndexSpec(name=current.name, table_name=current.table_name, vector_fields=vector_fields, fields=fields,
                        key_field=current.key_field, kind=current.kind, settings=settings, model=model)
    changed.validate()
    with db.connection() as conn, conn.transaction():
        shape = TableShape(changed)
        definition = TableDefinition(shape)
        if require_filled is not None:
            columns, excused = require_filled
            definition.lock_against_writes(conn)
            left = [key for key, _ in TableQueries(shape).keys_missing(conn, columns, None, len(excused) + 1)
                    if key not in excused]
            if left:
                raise RowsStillEmpty(f"index {name!r} has rows to fill first, e.g. {left[0]!r}")
        add_fields, add_vectors = add
        if add_fields or add_vectors:
            definition.add_columns(conn, add_fields, add_vectors)
        if drop:
            definition.drop_columns(conn, drop)
        conn.execute(
            "UPDATE pixsearch_indexes SET vector_fields = %s, fields = %s, model = %s, settings = %s, updated_at = now()"
            " WHERE name = %s",
            (Jsonb([vf.to_json() for vf in vector_fields]), Jsonb([asdict(f) for f in fields]), model, Jsonb(settings),
             name),
        )
    return changed


def _merged(settings: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """One level deep: dict values are merged, None removes a key, anything else replaces."""
    merged = dict(settings)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def add_to_settings(db: Database, name: str, key: str, counts: dict[str, int]) -> IndexSpec:
    """Add `counts` to the numbers kept under settings[key] (e.g. what captioning cost so far), in one transaction
    holding the row: concurrent runs each add their own."""
    with db.connection() as conn, conn.transaction():
        row = conn.execute("SELECT settings FROM pixsearch_indexes WHERE name = %s FOR UPDATE", (name,)).fetchone()
        if row is None:
            raise IndexNotFoundError(f"no index named {name!r}")
        totals = dict(row[0].get(key) or {})
        for counter, value in counts.items():
            totals[counter] = int(totals.get(counter) or 0) + int(value)
        conn.execute("UPDATE pixsearch_indexes SET settings = settings || %s, updated_at = now() WHERE name = %s",
                     (Jsonb({key: totals}), name))
    return get_index(db, name)


def update_settings(db: Database, name: str, changes: dict[str, Any]) -> IndexSpec:
    """Merge `changes` into the index's settings (one level deep: dict values are merged, None removes a key,
    others replace)."""
    with db.connection() as conn, conn.transaction():
        row = conn.execute("SELECT settings FROM pixsearch_indexes WHERE name = %s FOR UPDATE", (name,)).fetchone()
        if row is None:
            raise IndexNotFoundError(f"no index named {name!r}")
        settings = _merged(row[0], changes)
        conn.execute(
            "UPDATE pixsearch_indexes SET settings = %s, updated_at = now() WHERE name = %s", (Jsonb(settings), name)
        )
    return get_index(db, name)

"""Regions (object patches) of a photo index: a child table keyed by (photo key, region id), with each region's box
and label and the parent's vector fields, ANN-indexed like the parent.

The child is a DocumentTable over a derived spec (`region_spec`), so writes (COPY + upsert), filters and kNN search
are the parent's own code. What differs: the primary key includes the photo key, a foreign key deletes a photo's
regions with the photo, and on Citus the child is distributed by the photo key, colocated with the parent, so a
photo and its regions live on the same shard.
"""
from __future__ import annotations

from typing import Any, Sequence

import psycopg
from psycopg import sql

from pixsearch.db import Database
from pixsearch.store.schema import CAPTION_FIELD, Field, IndexSpec
from pixsearch.store.tables import DocumentTable, derived_identifier

PHOTO_KEY = "photo_key"
_STAGED = sql.Identifier("pixsearch_staged_regions")
REGION_FIELDS: tuple[Field, ...] = (
    Field(PHOTO_KEY, "string", filterable=True),
    Field("region", "string", filterable=True),
    Field("x0", "int"),
    Field("y0", "int"),
    Field("x1", "int"),
    Field("y1", "int"),
    Field("label", "string", filterable=True, facetable=True),
    Field("score", "float", filterable=True, sortable=True),
    Field("source", "string", filterable=True, facetable=True),
)


def region_spec(parent: IndexSpec) -> IndexSpec:
    """The child table's spec: the region fields and the parent's modelled vector fields but the caption's (same
    names, dims, storage, metric, model), its distribution and tuned search settings."""
    vector_fields = tuple(vf for vf in parent.vector_fields if vf.model_id and vf.name != CAPTION_FIELD)
    settings = {key: parent.settings[key] for key in ("distribution", "tuned") if key in parent.settings}
    return IndexSpec(
        name=f"{parent.name}/regions",
        table_name=derived_identifier(parent.table_name, "regions"),
        vector_fields=vector_fields,
        fields=REGION_FIELDS,
        key_field="id",
        kind="regions",
        settings=settings,
        model=parent.model,
    )


class RegionTable(DocumentTable):
    def __init__(self, parent: IndexSpec):
        super().__init__(region_spec(parent))
        self.parent = parent

    def conflict_target(self) -> sql.Composable:
        return sql.SQL("{}, {}").format(sql.Identifier(PHOTO_KEY), self.key)

    def derived_names(self) -> list[str]:
        return [*super().derived_names(), self.derived_name("label")]

    def exists(self, conn: psycopg.Connection) -> bool:
        return conn.execute("SELECT to_regclass(%s)", (self.table.as_string(conn),)).fetchone()[0] is not None

    def create(self, conn: psycopg.Connection) -> None:
        """The child table with its ANN indexes; on Citus distributed colocated with the parent; then the foreign
        key (Citus accepts it only between colocated tables, so it comes last)."""
        super().create(conn)
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            self.table, sql.Identifier(f"{self.spec.table_name}_pkey")))
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(self.table, self.conflict_target()))
        conn.execute(sql.SQL("CREATE INDEX {} ON {} ({})").format(
            sql.Identifier(self.derived_name("label")), self.table, sql.Identifier("label")))
        parent = sql.Identifier(self.parent.table_name)
        if self.parent.settings.get("distribution"):
            conn.execute("SELECT create_distributed_table(%s, %s, colocate_with => %s)",
                         (self.table.as_string(conn), PHOTO_KEY, parent.as_string(conn)))
        conn.execute(sql.SQL(
            "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE CASCADE"
        ).format(self.table, sql.Identifier(self.derived_name("photo", "fk")), sql.Identifier(PHOTO_KEY), parent,
                 sql.Identifier(self.parent.key_field)))

    def stage_photos(self, conn: psycopg.Connection, photo_keys: Sequence[str]) -> bool:
        """Keep a copy of these photos' regions (in the caller's transaction) before the photos are deleted and
        written back under new keys (which deletes their regions); restore_photos puts them back. False when
        there is no region table."""
        if not photo_keys or not self.exists(conn):
            return False
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT * FROM {} WHERE {} = ANY(%s)").format(
            _STAGED, self.table, sql.Identifier(PHOTO_KEY)), (list(photo_keys),))
        return True

    def restore_photos(self, conn: psycopg.Connection, renamed: Sequence[tuple[str, str]]) -> None:
        """Write the staged regions back under the photos' new keys ((old key, new key) pairs)."""
        kept = [name for name in self._all_columns() if name not in (self.spec.key_field, PHOTO_KEY)]
        statement = sql.SQL(
            "INSERT INTO {t} ({key}, {photo}, {kept}) SELECT %(new)s || ':' || region, %(new)s, {kept} FROM {s} "
            "WHERE {photo} = %(old)s"
        ).format(t=self.table, key=self.key, photo=sql.Identifier(PHOTO_KEY), s=_STAGED,
                 kept=sql.SQL(", ").join(map(sql.Identifier, kept)))
        with conn.cursor() as cur:
            cur.executemany(statement, [{"old": old, "new": new} for old, new in renamed])
        conn.execute(sql.SQL("DROP TABLE {}").format(_STAGED))

    def ensure(self, db: Database) -> None:
        """Create the table if it is not there yet."""
        with db.connection() as conn, conn.transaction():
            if not self.exists(conn):
                self.create(conn)

    def replace_photos(self, db: Database, photo_keys: list[str], rows: list[dict[str, Any]], source: str) -> None:
        """In one transaction: the regions of these photos from `source` replaced by `rows`."""
        with db.connection() as conn, conn.transaction():
            if photo_keys:
                conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s) AND source = %s").format(
                    self.table, sql.Identifier(PHOTO_KEY)), (photo_keys, source))
            if rows:
                self.write(conn, rows)

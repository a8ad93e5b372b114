"""Regions (object patches) of a photo index: a child table keyed by (photo key, region id), with each region's box
and label and the parent's vector fields, ANN-indexed like the parent.

The child is built from the same parts as any index table (store/table.py) over a derived spec (`region_spec`), so
writes (COPY + upsert), filters and kNN search are the parent's own code. What differs: the primary key includes the
photo key, a foreign key deletes a photo's regions with the photo, and on Citus the child is distributed by the photo
key, colocated with the parent, so a photo and its regions live on the same shard.
"""
from __future__ import annotations

from typing import Any, Sequence

import psycopg
from psycopg import sql

from pixsearch.db import Database
from pixsearch.store.filters import Filter
from pixsearch.store.results import QueryOptions, SearchResult
from pixsearch.store.schema import CAPTION_FIELD, Field, IndexSpec, VectorField
from pixsearch.store.shape import TableShape, derived_identifier, identifiers
from pixsearch.store.definition import ann_index_sql
from pixsearch.store.table import Table
from pixsearch.store.writes import drop_temp_sql

PHOTO_KEY = "photo_key"
STAGED = sql.Identifier("pixsearch_staged_regions")
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
# Faces (store/faces.py) are regions of source FACE_SOURCE with a person, a grouping state, a small thumbnail and a
# descriptor field of their own. An index's region table has these columns once faces were turned on for it
# (settings regions.faces), and keeps them: a move copies every column the spec names.
FACE_SOURCE = "faces"
FACE_FIELD = "face"
FACE_FIELDS: tuple[Field, ...] = (
    Field("person", "int", filterable=True),
    # "auto": grouped into people automatically; "small": too small or unsure to group (kept, shown, not grouped);
    # "removed": taken off a person by hand (kept out of automatic grouping from then on)
    Field("face_state", "string", filterable=True),
    Field("thumb", "string", retrievable=False),  # a small WebP of the face, base64
)
FACE_VECTOR = VectorField(FACE_FIELD, 128, model_id="dlib:face_recognition_resnet_model_v1", metric="l2")


def has_faces(parent: IndexSpec) -> bool:
    return bool((parent.settings.get("regions") or {}).get("faces"))


def region_spec(parent: IndexSpec) -> IndexSpec:
    """The child table's spec: the region fields and the parent's modelled vector fields but the caption's (same
    names, dims, storage, metric, model), its distribution and tuned search settings."""
    vector_fields = tuple(vf for vf in parent.vector_fields if vf.model_id and vf.name != CAPTION_FIELD)
    fields = REGION_FIELDS
    if has_faces(parent):
        vector_fields += (FACE_VECTOR,)
        fields += FACE_FIELDS
    settings = {key: parent.settings[key] for key in ("distribution", "tuned") if key in parent.settings}
    return IndexSpec(
        name=f"{parent.name}/regions",
        table_name=derived_identifier(parent.table_name, "regions"),
        vector_fields=vector_fields,
        fields=fields,
        key_field="id",
        kind="regions",
        settings=settings,
        model=parent.model,
    )


def region_shape(parent: IndexSpec) -> TableShape:
    return TableShape(region_spec(parent), conflict_columns=(PHOTO_KEY, "id"), extra_indexes=(("label",),))


# -- statements ---------------------------------------------------------------------------------------------------
def primary_key_sql(shape: TableShape) -> list[sql.Composed]:
    """The key CREATE TABLE made replaced by (photo key, region key)."""
    return [sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(shape.table, sql.Identifier(f"{shape.spec.table_name}_pkey")),
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(shape.table, shape.conflict_target)]


def label_index_sql(shape: TableShape) -> sql.Composed:
    return sql.SQL("CREATE INDEX {} ON {} ({})").format(
        sql.Identifier(shape.derived_name("label")), shape.table, sql.Identifier("label"))


DISTRIBUTE_SQL = sql.SQL("SELECT create_distributed_table(%s, %s, colocate_with => %s)")


def foreign_key_sql(shape: TableShape, parent: IndexSpec) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE CASCADE").format(
        shape.table, sql.Identifier(shape.derived_name("photo", "fk")), sql.Identifier(PHOTO_KEY),
        sql.Identifier(parent.table_name), sql.Identifier(parent.key_field))


def stage_photos_sql(shape: TableShape) -> sql.Composed:
    """A copy of the regions of the photos whose key is in %s, dropped at commit."""
    return sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT * FROM {} WHERE {} = ANY(%s)").format(
        STAGED, shape.table, sql.Identifier(PHOTO_KEY))


def restore_photo_sql(shape: TableShape) -> sql.Composed:
    """The staged regions of photo %(old)s written back under its new key %(new)s."""
    kept = identifiers([name for name in shape.all_columns if name not in (shape.spec.key_field, PHOTO_KEY)])
    return sql.SQL(
        "INSERT INTO {t} ({key}, {photo}, {kept}) SELECT %(new)s || ':' || region, %(new)s, {kept} FROM {s} "
        "WHERE {photo} = %(old)s"
    ).format(t=shape.table, key=shape.key, photo=sql.Identifier(PHOTO_KEY), s=STAGED, kept=kept)


def delete_source_sql(shape: TableShape) -> sql.Composed:
    """The regions of the photos whose key is in the first %s that came from the source %s."""
    return sql.SQL("DELETE FROM {} WHERE {} = ANY(%s) AND source = %s").format(shape.table, sql.Identifier(PHOTO_KEY))


# -- execution ----------------------------------------------------------------------------------------------------
class RegionTable:
    def __init__(self, parent: IndexSpec):
        self.parent = parent
        self.parts = Table(region_shape(parent))
        self.spec = self.parts.spec

    def exists(self, conn: psycopg.Connection) -> bool:
        return self.parts.definition.exists(conn)

    def create(self, conn: psycopg.Connection) -> None:
        """The child table with its ANN indexes; on Citus distributed colocated with the parent; then the foreign
        key (Citus accepts it only between colocated tables, so it comes last)."""
        shape = self.parts.shape
        self.parts.definition.create(conn)
        for statement in [*primary_key_sql(shape), label_index_sql(shape)]:
            conn.execute(statement)
        if self.parent.settings.get("distribution"):
            conn.execute(DISTRIBUTE_SQL, (shape.table.as_string(conn), PHOTO_KEY,
                                          sql.Identifier(self.parent.table_name).as_string(conn)))
        conn.execute(foreign_key_sql(shape, self.parent))

    def rename_to(self, conn: psycopg.Connection, renamed_parent: IndexSpec) -> None:
        self.parts.definition.rename_to(conn, region_shape(renamed_parent))

    def stage_photos(self, conn: psycopg.Connection, photo_keys: Sequence[str]) -> bool:
        """Keep a copy of these photos' regions (in the caller's transaction) before the photos are deleted and
        written back under new keys (which deletes their regions); restore_photos puts them back. False when
        there is no region table."""
        if not photo_keys or not self.exists(conn):
            return False
        conn.execute(stage_photos_sql(self.parts.shape), (list(photo_keys),))
        return True

    def restore_photos(self, conn: psycopg.Connection, renamed: Sequence[tuple[str, str]]) -> None:
        """Write the staged regions back under the photos' new keys ((old key, new key) pairs)."""
        with conn.cursor() as cur:
            cur.executemany(restore_photo_sql(self.parts.shape), [{"old": old, "new": new} for old, new in renamed])
        conn.execute(drop_temp_sql(STAGED))

    def ensure(self, db: Database) -> None:
        """Create the table if it is not there yet; one made before faces were turned on gets their columns."""
        with db.connection() as conn, conn.transaction():
            if not self.exists(conn):
                self.create(conn)
            elif has_faces(self.parent):
                self.parts.definition.add_columns(conn, FACE_FIELDS, (FACE_VECTOR,))
                if not self.parts.definition.ann_index_exists(conn, FACE_VECTOR):
                    conn.execute(ann_index_sql(self.parts.shape, FACE_VECTOR, lists=None))

    def replace_photos(self, db: Database, photo_keys: list[str], rows: list[dict[str, Any]], source: str) -> None:
        """In one transaction: the regions of these photos from `source` replaced by `rows`."""
        with db.connection() as conn, conn.transaction():
            if photo_keys:
                conn.execute(delete_source_sql(self.parts.shape), (photo_keys, source))
            if rows:
                self.parts.writes.write(conn, rows)

    def search(self, conn: psycopg.Connection, field_name: str | None, vector: Any, k: int, *,
               filter: Filter | None = None, options: QueryOptions = QueryOptions(), in_snapshot: bool = True
               ) -> SearchResult:
        """The k nearest regions; region searches run inside a search's snapshot (Reader.search_regions)."""
        return self.parts.knn.search(conn, field_name, vector, k, filter=filter, options=options,
                                     in_snapshot=in_snapshot)

    def analyze(self, conn: psycopg.Connection) -> None:
        self.parts.stats.analyze(conn)

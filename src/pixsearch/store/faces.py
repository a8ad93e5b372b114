"""Faces and people of a photo index.

A face is a row of the index's region table (store/regions.py) with source FACE_SOURCE: its box in pixels of the
upright original, the detector's score, its person (NULL: not grouped yet), its grouping state, a small thumbnail
and its 128-d descriptor in a vector field of its own (`face`, L2, HNSW). Faces belong to their photo's row: they go
when the photo goes (the foreign key), follow it when it moves (move_photos), and are replaced when it changes.

People are a small table of their own (`<table>_people`: id, name), a reference table on Citus. Which person a face
belongs to is on the face, so merging two people is one UPDATE and forgetting one deletes its faces. The photo row's
`people` field (names, and ids for unnamed people) is derived from its faces by `refresh_people_field`, after
every change of who is in which photo.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import psycopg
from psycopg import sql

from pixsearch.db import Database
from pixsearch.store.filters import And, Compare, Filter
from pixsearch.store.regions import FACE_FIELD, FACE_SOURCE, PHOTO_KEY, RegionTable
from pixsearch.store.results import Hit, QueryOptions, SearchResult
from pixsearch.store.shape import derived_identifier
from pixsearch.store.table import Table

PEOPLE_FIELD = "people"  # the photo field: names, and ids (as text) for unnamed people
FACE_COUNT_FIELD = "face_count"  # the photo field: faces found when it was scanned (NULL: not scanned yet)
AUTO, SMALL, REMOVED = "auto", "small", "removed"  # face_state values (see store/regions.py FACE_FIELDS)
AUTO_FACES: Filter = And((Compare("source", "eq", FACE_SOURCE), Compare("face_state", "eq", AUTO)))


def people_table_name(table_name: str) -> str:
    return derived_identifier(table_name, "people")


# -- statements ---------------------------------------------------------------------------------------------------
def create_people_sql(people: sql.Identifier) -> sql.Composed:
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, name text, "
                   "created_at timestamptz NOT NULL DEFAULT now())").format(people)


REFERENCE_SQL = sql.SQL("SELECT create_reference_table(%s)")


def new_person_sql(people: sql.Identifier) -> sql.Composed:
    """A new person with the next id (ids are never taken from a sequence, so a restored table goes on from its own
    largest id; the caller's transaction holds the table lock)."""
    return sql.SQL("INSERT INTO {p} (id, name) SELECT coalesce(max(id), 0) + 1, %s FROM {p} RETURNING id").format(
        p=people)


def lock_people_sql(people: sql.Identifier) -> sql.Composed:
    return sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(people)


def people_sql(regions: sql.Identifier, people: sql.Identifier) -> sql.Composed:
    """Every person with faces: id, name, faces, photos, a sample face (the best-scored of the largest), named
    people first, then by faces."""
    return sql.SQL(
        "SELECT p.id, p.name, count(*), count(DISTINCT r.{photo}), "
        "(array_agg(r.id ORDER BY (r.x1 - r.x0) * (r.y1 - r.y0) DESC, r.score DESC NULLS LAST, r.id))[1] "
        "FROM {p} p JOIN {r} r ON r.person = p.id AND r.source = %(source)s "
        "WHERE %(ids)s::bigint[] IS NULL OR p.id = ANY(%(ids)s) "
        "GROUP BY p.id, p.name ORDER BY p.name IS NULL, count(*) DESC, p.id"
    ).format(p=people, r=regions, photo=sql.Identifier(PHOTO_KEY))


def person_photos_sql(regions: sql.Identifier) -> sql.Composed:
    return sql.SQL("SELECT DISTINCT {photo} FROM {r} WHERE person = ANY(%s) AND source = %s ORDER BY 1").format(
        r=regions, photo=sql.Identifier(PHOTO_KEY))


def photo_faces_sql(regions: sql.Identifier, people: sql.Identifier) -> sql.Composed:
    return sql.SQL(
        "SELECT r.id, r.{photo}, r.x0, r.y0, r.x1, r.y1, r.score, r.person, p.name, r.face_state "
        "FROM {r} r LEFT JOIN {p} p ON p.id = r.person "
        "WHERE r.{photo} = ANY(%s) AND r.source = %s ORDER BY r.{photo}, r.region"
    ).format(r=regions, p=people, photo=sql.Identifier(PHOTO_KEY))


def face_sql(regions: sql.Identifier, people: sql.Identifier, columns: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "SELECT r.id, r.{photo}, r.x0, r.y0, r.x1, r.y1, r.score, r.person, p.name, r.face_state{columns} "
        "FROM {r} r LEFT JOIN {p} p ON p.id = r.person WHERE r.id = %s AND r.source = %s"
    ).format(r=regions, p=people, photo=sql.Identifier(PHOTO_KEY), columns=columns)


def ungrouped_sql(regions: sql.Identifier) -> sql.Composed:
    """The faces automatic grouping still has to place (all, or those whose id is in %(ids)s): AUTO state, no
    person; id and descriptor, in id order."""
    return sql.SQL("SELECT id, {face} FROM {r} WHERE source = %(source)s AND face_state = %(state)s "
                   "AND person IS NULL AND {face} IS NOT NULL AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s)) "
                   "ORDER BY id").format(r=regions, face=sql.Identifier(FACE_FIELD))


def assign_sql(regions: sql.Identifier) -> sql.Composed:
    return sql.SQL("UPDATE {} SET person = %s WHERE id = ANY(%s) AND source = %s").format(regions)


def names_sql(regions: sql.Identifier, people: sql.Identifier) -> sql.Composed:
    """(photo key, the person's name or id) of every grouped face of the photos whose key is in %s."""
    return sql.SQL(
        "SELECT DISTINCT r.{photo}, coalesce(p.name, p.id::text) FROM {r} r JOIN {p} p ON p.id = r.person "
        "WHERE r.{photo} = ANY(%s) AND r.source = %s"
    ).format(r=regions, p=people, photo=sql.Identifier(PHOTO_KEY))


def delete_faces_of_photos_sql(regions: sql.Identifier) -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE {} = ANY(%s) AND source = %s").format(regions, sql.Identifier(PHOTO_KEY))


# -- execution ----------------------------------------------------------------------------------------------------
class FaceTable:
    """The faces (in the region table) and people of one photo index. Every method opens its own connection and
    transaction, or runs in the one given."""

    def __init__(self, parent: Table, regions: RegionTable):
        self.parent = parent
        self.regions = regions
        self.r = regions.parts.shape.table
        self.people_name = people_table_name(parent.spec.table_name)
        self.p = sql.Identifier(self.people_name)

    # -- definition -----------------------------------------------------------------------------------------------
    def ensure(self, db: Database) -> None:
        """The region table with its face columns, and the people table (a reference table on Citus)."""
        self.regions.ensure(db)
        with db.connection() as conn, conn.transaction():
            if conn.execute("SELECT to_regclass(%s)", (self.p.as_string(conn),)).fetchone()[0] is None:
                conn.execute(create_people_sql(self.p))
                if self.parent.spec.settings.get("distribution"):
                    conn.execute(REFERENCE_SQL, (self.p.as_string(conn),))

    # -- detection results ----------------------------------------------------------------------------------------
    def replace(self, db: Database, counts: Sequence[tuple[str, int]], rows: list[dict[str, Any]]) -> None:
        """In one transaction: the faces of these photos replaced by `rows`, their face_count set ((key, count)
        pairs) and their people field cleared (the new faces are not grouped yet)."""
        keys = [key for key, _ in counts]
        with db.connection() as conn, conn.transaction():
            conn.execute(delete_faces_of_photos_sql(self.r), (keys, FACE_SOURCE))
            if rows:
                self.regions.parts.writes.write(conn, rows)
            self.parent.writes.update_rows(conn, (FACE_COUNT_FIELD, PEOPLE_FIELD),
                                           [(key, count, None) for key, count in counts])

    # -- grouping -------------------------------------------------------------------------------------------------
    def ungrouped(self, conn: psycopg.Connection, ids: Sequence[str] | None = None) -> list[tuple[str, Any]]:
        params = {"source": FACE_SOURCE, "state": AUTO, "ids": list(ids) if ids is not None else None}
        return [(row[0], row[1].to_numpy()) for row in conn.execute(ungrouped_sql(self.r), params)]

    def neighbours(self, conn: psycopg.Connection, vector: Any, k: int) -> SearchResult:
        """The k faces nearest to `vector` among those automatic grouping may use (through the HNSW index)."""
        return self.regions.parts.knn.search(conn, FACE_FIELD, vector, k, filter=AUTO_FACES, options=QueryOptions(),
                                             count_if_short=False, in_snapshot=True)

    def new_person(self, conn: psycopg.Connection, name: str | None = None) -> int:
        conn.execute(lock_people_sql(self.p))
        return conn.execute(new_person_sql(self.p), (name,)).fetchone()[0]

    def assign(self, conn: psycopg.Connection, face_ids: Sequence[str], person: int | None) -> None:
        conn.execute(assign_sql(self.r), (person, list(face_ids), FACE_SOURCE))

    # -- reads ----------------------------------------------------------------------------------------------------
    def people(self, conn: psycopg.Connection, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        rows = conn.execute(people_sql(self.r, self.p), {"source": FACE_SOURCE,
                                                          "ids": list(ids) if ids is not None else None})
        return [{"id": row[0], "name": row[1], "faces": row[2], "photo_count": row[3], "sample_face": row[4]}
                for row in rows]

    def person_exists(self, conn: psycopg.Connection, person: int) -> bool:
        query = sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(self.p)
        return conn.execute(query, (person,)).fetchone() is not None

    def person_photos(self, conn: psycopg.Connection, people: Sequence[int]) -> list[str]:
        return [row[0] for row in conn.execute(person_photos_sql(self.r), (list(people), FACE_SOURCE))]

    def photo_faces(self, conn: psycopg.Connection, photo_keys: Sequence[str]) -> list[dict[str, Any]]:
        return [_face(row) for row in conn.execute(photo_faces_sql(self.r, self.p), (list(photo_keys), FACE_SOURCE))]

    def face(self, conn: psycopg.Connection, face_id: str, *, descriptor: bool = False, thumb: bool = False
             ) -> dict[str, Any] | None:
        """One face (None: no such face); with its descriptor (a numpy array) and thumbnail (base64) if asked."""
        extra = [name for name, wanted in ((FACE_FIELD, descriptor), ("thumb", thumb)) if wanted]
        columns = sql.SQL("").join(sql.SQL(", r.{}").format(sql.Identifier(c)) for c in extra)
        row = conn.execute(face_sql(self.r, self.p, columns), (face_id, FACE_SOURCE)).fetchone()
        if row is None:
            return None
        found = _face(row[:10])
        for name, value in zip(extra, row[10:]):
            found[name] = value.to_numpy() if name == FACE_FIELD and value is not None else value
        return found

    # -- changes by hand ------------------------------------------------------------------------------------------
    def rename(self, conn: psycopg.Connection, person: int, name: str | None) -> bool:
        query = sql.SQL("UPDATE {} SET name = %s WHERE id = %s").format(self.p)
        return conn.execute(query, (name, person)).rowcount == 1

    def named(self, conn: psycopg.Connection, name: str) -> list[int]:
        query = sql.SQL("SELECT id FROM {} WHERE name = %s ORDER BY id").format(self.p)
        return [row[0] for row in conn.execute(query, (name,))]

    def merge(self, conn: psycopg.Connection, into: int, others: Sequence[int]) -> None:
        """The faces of `others` become `into`'s; `into` takes the first name among them if it has none; the others
        are removed."""
        conn.execute(sql.SQL("UPDATE {} SET person = %s WHERE person = ANY(%s) AND source = %s").format(self.r),
                     (into, list(others), FACE_SOURCE))
        conn.execute(sql.SQL(
            "UPDATE {p} SET name = (SELECT name FROM {p} WHERE id = ANY(%(others)s) AND name IS NOT NULL "
            "ORDER BY array_position(%(others)s::bigint[], id) LIMIT 1) WHERE id = %(into)s AND name IS NULL").format(p=self.p),
            {"others": list(others), "into": into})
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self.p), (list(others),))

    def remove_face(self, conn: psycopg.Connection, face_id: str) -> None:
        """The face leaves its person and stays out of automatic grouping."""
        conn.execute(sql.SQL("UPDATE {} SET person = NULL, face_state = %s WHERE id = %s AND source = %s").format(
            self.r), (REMOVED, face_id, FACE_SOURCE))

    def forget(self, conn: psycopg.Connection, people: Sequence[int]) -> int:
        """Delete these people and their faces (boxes, thumbnails, descriptors); the number of faces deleted."""
        deleted = conn.execute(sql.SQL("DELETE FROM {} WHERE person = ANY(%s) AND source = %s").format(self.r),
                               (list(people), FACE_SOURCE)).rowcount
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self.p), (list(people),))
        return deleted

    def forget_all(self, conn: psycopg.Connection) -> int:
        """Every face and person of the index deleted, and every photo's face fields cleared; faces deleted."""
        deleted = conn.execute(sql.SQL("DELETE FROM {} WHERE source = %s").format(self.r), (FACE_SOURCE,)).rowcount
        conn.execute(sql.SQL("DELETE FROM {}").format(self.p))
        conn.execute(sql.SQL("UPDATE {} SET {} = NULL, {} = NULL WHERE {} IS NOT NULL OR {} IS NOT NULL").format(
            self.parent.shape.table, *(sql.Identifier(c) for c in (FACE_COUNT_FIELD, PEOPLE_FIELD) * 2)))
        return deleted

    def ungroup_unnamed(self, conn: psycopg.Connection) -> list[str]:
        """Unnamed people dissolved (their faces back to ungrouped); the photos that had them."""
        unnamed = [row[0] for row in conn.execute(sql.SQL("SELECT id FROM {} WHERE name IS NULL").format(self.p))]
        photos = self.person_photos(conn, unnamed)
        self.assign_people(conn, unnamed, None)
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self.p), (unnamed,))
        return photos

    def assign_people(self, conn: psycopg.Connection, people: Sequence[int], person: int | None) -> None:
        conn.execute(sql.SQL("UPDATE {} SET person = %s WHERE person = ANY(%s) AND source = %s").format(self.r),
                     (person, list(people), FACE_SOURCE))

    def drop_empty_unnamed(self, conn: psycopg.Connection) -> int:
        """Unnamed people left without faces (their photos were removed) deleted; how many."""
        return conn.execute(sql.SQL(
            "DELETE FROM {p} p WHERE p.name IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM {r} r WHERE r.person = p.id AND r.source = %s)").format(p=self.p, r=self.r),
            (FACE_SOURCE,)).rowcount

    # -- the photos' people field ---------------------------------------------------------------------------------
    def refresh_people_field(self, conn: psycopg.Connection, photo_keys: Sequence[str]) -> None:
        """Each photo's `people` set from its grouped faces (names, and ids for unnamed people; NULL: nobody)."""
        keys = sorted(set(photo_keys))
        if not keys:
            return
        found: dict[str, list[str]] = {key: [] for key in keys}
        for key, label in conn.execute(names_sql(self.r, self.p), (keys, FACE_SOURCE)):
            found[key].append(label)
        self.parent.writes.update_rows(conn, (PEOPLE_FIELD,), [(key, sorted(found[key]) or None) for key in keys])


def _face(row: Sequence[Any]) -> dict[str, Any]:
    face_id, photo, x0, y0, x1, y1, score, person, name, state = row
    return {"id": face_id, "photo": photo, "box": [x0, y0, x1, y1], "score": score, "person": person, "name": name,
            "state": state}


class FaceSession:
    """What one transaction does with faces and people (FaceStore.session): a grouping pass, or a change by hand
    with the refresh of the photos it touches. The connection never leaves store/."""

    def __init__(self, table: FaceTable, conn: psycopg.Connection):
        self._t, self._conn = table, conn

    def ungrouped(self, ids: Sequence[str] | None = None) -> list[tuple[str, Any]]:
        return self._t.ungrouped(self._conn, ids)

    def neighbours(self, vector: Any, k: int) -> SearchResult:
        return self._t.neighbours(self._conn, vector, k)

    def new_person(self, name: str | None = None) -> int:
        return self._t.new_person(self._conn, name)

    def assign(self, face_ids: Sequence[str], person: int | None) -> None:
        self._t.assign(self._conn, face_ids, person)

    def people(self, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        return self._t.people(self._conn, ids)

    def person_exists(self, person: int) -> bool:
        return self._t.person_exists(self._conn, person)

    def person_photos(self, people: Sequence[int]) -> list[str]:
        return self._t.person_photos(self._conn, people)

    def photo_faces(self, photo_keys: Sequence[str]) -> list[dict[str, Any]]:
        return self._t.photo_faces(self._conn, photo_keys)

    def face(self, face_id: str, *, descriptor: bool = False, thumb: bool = False) -> dict[str, Any] | None:
        return self._t.face(self._conn, face_id, descriptor=descriptor, thumb=thumb)

    def rename(self, person: int, name: str | None) -> bool:
        return self._t.rename(self._conn, person, name)

    def named(self, name: str) -> list[int]:
        return self._t.named(self._conn, name)

    def merge(self, into: int, others: Sequence[int]) -> None:
        self._t.merge(self._conn, into, others)

    def remove_face(self, face_id: str) -> None:
        self._t.remove_face(self._conn, face_id)

    def forget(self, people: Sequence[int]) -> int:
        return self._t.forget(self._conn, people)

    def forget_all(self) -> int:
        return self._t.forget_all(self._conn)

    def ungroup_unnamed(self) -> list[str]:
        return self._t.ungroup_unnamed(self._conn)

    def drop_empty_unnamed(self) -> int:
        return self._t.drop_empty_unnamed(self._conn)

    def refresh_people_field(self, photo_keys: Sequence[str]) -> None:
        self._t.refresh_people_field(self._conn, photo_keys)


class FaceStore:
    """The faces and people of one photo index in `db` (IndexStore.faces)."""

    def __init__(self, db: Database, table: FaceTable):
        self.db, self.table = db, table

    def ensure(self) -> None:
        self.table.ensure(self.db)

    def exists(self) -> bool:
        """Whether the people table is there (faces were turned on for this index at some point)."""
        with self.db.connection() as conn:
            return conn.execute("SELECT to_regclass(%s)", (self.table.p.as_string(conn),)).fetchone()[0] is not None

    def replace(self, counts: Sequence[tuple[str, int]], rows: list[dict[str, Any]]) -> None:
        self.table.replace(self.db, counts, rows)

    @contextmanager
    def session(self) -> Iterator[FaceSession]:
        """One transaction (committed when the block ends without an exception)."""
        with self.db.connection() as conn, conn.transaction():
            yield FaceSession(self.table, conn)

    def near(self, vector: Any, k: int, person: int | None = None) -> list[Hit]:
        """The k faces nearest to `vector` (any state), and with `person` also that person's k nearest faces; each
        face once, nearest first."""
        filters: list[Filter] = [Compare("source", "eq", FACE_SOURCE)]
        if person is not None:
            filters.append(And((Compare("source", "eq", FACE_SOURCE), Compare("person", "eq", person))))
        found: dict[str, Hit] = {}
        with self.db.connection() as conn, conn.transaction():
            for node in filters:
                for hit in self.table.regions.parts.knn.search(conn, FACE_FIELD, vector, k, filter=node,
                                                               count_if_short=False, in_snapshot=True).hits:
                    found.setdefault(hit.id, hit)
        return sorted(found.values(), key=lambda hit: (hit.distance, hit.id))

    def analyze(self) -> None:
        with self.db.connection() as conn:
            self.table.regions.analyze(conn)

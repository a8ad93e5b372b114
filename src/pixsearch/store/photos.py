"""Photo indexes: the record ingest writes, and the lookups incremental ingest needs, over an index Table."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Iterable, Sequence

import numpy as np
import psycopg

from pixsearch.store.regions import RegionTable
from pixsearch.store.table import Table


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
    taken_at_source: str | None = None
    camera: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    title: str | None = None
    description: str | None = None
    keywords: list[str] | None = None
    ocr_text: str | None = None
    ocr_boxes: str | None = None  # JSON: [{"text", "score", "box": [x0, y0, x1, y1]}] in pixels of the original
    companion_key: str | None = None
    sidecar_state: str | None = None
    layout: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the embedder's own photo fields (Embedder.photo_fields)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    def to_row(self) -> dict:
        row = asdict(self)
        row.update(row.pop("extra"))
        row.update(row.pop("vectors"))
        return row


@dataclass(frozen=True)
class StoredState:
    """What ingest needs to decide whether a file changed since it was indexed."""

    id: str
    path: str
    size_bytes: int
    mtime_ns: int
    content_hash: str
    sidecar_state: str | None = None


STATE_COLUMNS = ("path", "size_bytes", "mtime_ns", "content_hash", "sidecar_state")


def stored_states(conn: psycopg.Connection, table: Table, ids: Sequence[str]) -> dict[str, StoredState]:
    rows = table.queries.select(conn, ids, STATE_COLUMNS)
    return {key: StoredState(id=key, **values) for key, values in rows.items()}


def write_photos(conn: psycopg.Connection, table: Table, records: Sequence[PhotoRecord]) -> None:
    table.writes.write(conn, [record.to_row() for record in records])


def touch(conn: psycopg.Connection, table: Table, changes: Iterable[tuple[str, int, int]]) -> None:
    """Record a new size/mtime for files whose content hash shows they did not really change (one round trip)."""
    table.writes.update_rows(conn, ("size_bytes", "mtime_ns"), list(changes))


def paths_under(conn: psycopg.Connection, table: Table, prefix: str) -> list[tuple[str, str]]:
    return table.queries.rows_where_prefix(conn, "path", prefix)


# What an absolute path not in its normal form holds (a "." or ".." part, a doubled or trailing separator), as LIKE
# patterns; ingest (scan.normal_path) decides which of the rows they match really are.
NOT_NORMAL_PATHS = ("%/./%", "%/../%", "%/.", "%/..", "%//%", "%/")
# Object URLs, in the one spelling sources/urls.py stores (`az://c/k`, `s3://b/k`): every one holds the "//" above,
# yet none is a misspelled local path; matching them would read every object's row again on each run.
OBJECT_URLS = ("az://%", "s3://%")


def paths_not_normal(conn: psycopg.Connection, table: Table) -> list[StoredState]:
    """The photos whose stored local path may be spelled other than normally (`/a/home/../p/x.jpg`)."""
    rows = table.queries.rows_where_like(conn, "path", NOT_NORMAL_PATHS, STATE_COLUMNS, unless=OBJECT_URLS)
    return [_state(table, row) for row in rows]


def _state(table: Table, row: dict[str, Any]) -> StoredState:
    return StoredState(id=row[table.spec.key_field], **{c: row[c] for c in STATE_COLUMNS})


def same_content(conn: psycopg.Connection, table: Table, digests: Sequence[str]
                 ) -> dict[str, list[StoredState]]:
    """The photos whose file had each of these contents when it was indexed, by content hash (one query)."""
    found: dict[str, list[StoredState]] = {}
    for row in table.queries.rows_where_in(conn, "content_hash", digests, STATE_COLUMNS):
        found.setdefault(row["content_hash"], []).append(_state(table, row))
    return found


@dataclass(frozen=True)
class PhotoLocation:
    """Where a photo's file is now: what a move or rename changes of its row (the key follows the path)."""

    id: str
    path: str
    folder: str
    filename: str
    size_bytes: int
    mtime_ns: int
    companion_key: str | None


def moved_columns(key_field: str) -> list[str]:
    """What a move replaces of a photo's row: its key and every column of its location (PhotoLocation)."""
    return [key_field, *(f.name for f in fields(PhotoLocation) if f.name != "id")]


def move_photos(conn: psycopg.Connection, table: Table, moves: Sequence[tuple[str, PhotoLocation]]) -> None:
    """Give photos whose files moved their new location, in one transaction, keeping their vectors, metadata and
    regions. Moves apply together (a swap is two moves); a row already at a destination is replaced."""
    moves = [(old, new) for old, new in moves if old != new.id]
    if not moves:
        return
    regions = RegionTable(table.spec)
    with conn.transaction():
        staged = regions.stage_photos(conn, [old for old, _ in moves])
        columns = moved_columns(table.spec.key_field)
        table.writes.rekey(conn, [(old, dict(zip(columns, [new.id, *(getattr(new, c) for c in columns[1:])])))
                                  for old, new in moves])
        if staged:
            regions.restore_photos(conn, [(old, new.id) for old, new in moves])


def fold_photos(conn: psycopg.Connection, table: Table, moves: Sequence[tuple[str, PhotoLocation]],
                duplicates: Sequence[str]) -> int:
    """In one transaction: remove the `duplicates`, then apply `moves` (move_photos). The number removed."""
    with conn.transaction():
        removed = table.writes.delete(conn, list(duplicates)) if duplicates else 0
        move_photos(conn, table, moves)
    return removed


DESCRIPTION_COLUMNS = ("title", "description", "keywords", "sidecar_state")


def update_descriptions(conn: psycopg.Connection, table: Table, rows: Sequence[dict[str, Any]],
                        caption_field: str | None) -> None:
    """Replace what people wrote about photos (and their caption vectors) when only their sidecars changed."""
    columns = [*DESCRIPTION_COLUMNS, *([caption_field] if caption_field else [])]
    table.writes.write(conn, rows, columns=columns, insert_missing=False)

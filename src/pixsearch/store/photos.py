"""Photo indexes: the record ingest writes, and the lookups incremental ingest needs, over a DocumentTable."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Iterable, Sequence

import numpy as np
import psycopg

from pixsearch.store.regions import RegionTable
from pixsearch.store.tables import DocumentTable


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


_STATE_COLUMNS = ("path", "size_bytes", "mtime_ns", "content_hash", "sidecar_state")


def stored_states(conn: psycopg.Connection, table: DocumentTable, ids: Sequence[str]) -> dict[str, StoredState]:
    rows = table.select(conn, ids, _STATE_COLUMNS)
    return {key: StoredState(id=key, **values) for key, values in rows.items()}


def write_photos(conn: psycopg.Connection, table: DocumentTable, records: Sequence[PhotoRecord]) -> None:
    table.write(conn, [record.to_row() for record in records])


def touch(conn: psycopg.Connection, table: DocumentTable, changes: Iterable[tuple[str, int, int]]) -> None:
    """Record a new size/mtime for files whose content hash shows they did not really change."""
    for photo_id, size, mtime_ns in changes:
        table.update_columns(conn, photo_id, {"size_bytes": size, "mtime_ns": mtime_ns})


def paths_under(conn: psycopg.Connection, table: DocumentTable, prefix: str) -> list[tuple[str, str]]:
    return table.rows_where_prefix(conn, "path", prefix)


# What an absolute path not in its normal form holds (a "." or ".." part, a doubled or trailing separator), as LIKE
# patterns; ingest (scan.normal_path) decides which of the rows they match really are.
_NOT_NORMAL = ("%/./%", "%/../%", "%/.", "%/..", "%//%", "%/")


def paths_not_normal(conn: psycopg.Connection, table: DocumentTable) -> list[StoredState]:
    """The photos whose stored path may be spelled other than normally (`/a/home/../p/x.jpg`)."""
    return _states(table, table.rows_where_like(conn, "path", _NOT_NORMAL, _STATE_COLUMNS))


def same_content(conn: psycopg.Connection, table: DocumentTable, digest: str) -> list[StoredState]:
    """The photos whose file had these bytes when it was indexed."""
    return _states(table, table.rows_where(conn, "content_hash", digest, _STATE_COLUMNS))


def _states(table: DocumentTable, rows: list[dict[str, Any]]) -> list[StoredState]:
    key = table.spec.key_field
    return [StoredState(id=row[key], **{c: row[c] for c in _STATE_COLUMNS}) for row in rows]


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


def move_photos(conn: psycopg.Connection, table: DocumentTable, moves: Sequence[tuple[str, PhotoLocation]]) -> None:
    """Give photos whose files moved their new location, in one transaction, keeping their vectors, metadata and
    regions. Moves apply together (a swap is two moves); a row already at a destination is replaced."""
    moves = [(old, new) for old, new in moves if old != new.id]
    if not moves:
        return
    regions = RegionTable(table.spec)
    with conn.transaction():
        staged = regions.stage_photos(conn, [old for old, _ in moves])
        table.rekey(conn, [(old, {table.spec.key_field: new.id, **{k: v for k, v in asdict(new).items() if k != "id"}})
                           for old, new in moves])
        if staged:
            regions.restore_photos(conn, [(old, new.id) for old, new in moves])


def fold_photos(conn: psycopg.Connection, table: DocumentTable, moves: Sequence[tuple[str, PhotoLocation]],
                duplicates: Sequence[str]) -> int:
    """In one transaction: remove the `duplicates` (their regions go with them), then apply `moves` (move_photos).
    Returns the number of rows removed."""
    with conn.transaction():
        removed = table.delete(conn, duplicates)
        move_photos(conn, table, moves)
    return removed


DESCRIPTION_COLUMNS = ("title", "description", "keywords", "sidecar_state")


def update_descriptions(conn: psycopg.Connection, table: DocumentTable, rows: Sequence[dict[str, Any]],
                        caption_field: str | None) -> None:
    """Replace what people wrote about photos (and their caption vectors) when only their sidecars changed."""
    columns = [*DESCRIPTION_COLUMNS, *([caption_field] if caption_field else [])]
    table.write(conn, rows, columns=columns, insert_missing=False)

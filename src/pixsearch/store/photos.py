"""Photo indexes: the record ingest writes, and the lookups incremental ingest needs, over a DocumentTable."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Iterable, Sequence

import numpy as np
import psycopg

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
    camera: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
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


_STATE_COLUMNS = ("path", "size_bytes", "mtime_ns", "content_hash")


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

"""IndexStore: one index's rows, and every connection and transaction around them.

Callers above store/ never see a connection. They read in one of two ways:
- `store.reader()`: one REPEATABLE READ, READ ONLY snapshot for everything a search reads (its ranked lists,
  documents, facets, counts), holding one pool connection;
- a single-statement read (`count`, `select`, ...), on a pooled connection of its own;
and they write through named operations (`write`, `delete`, `move_photos`, `prune`, ...), each of which opens and
commits its own transaction, so a batch is written whole or not at all.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import psycopg

from pixsearch.db import Database
from pixsearch.store import photos
from pixsearch.store.faces import FaceStore, FaceTable
from pixsearch.store.filters import Filter
from pixsearch.store.photos import PhotoLocation, PhotoRecord, StoredState
from pixsearch.store.regions import RegionTable
from pixsearch.store.registry import read_settings
from pixsearch.store.schema import IndexSpec, VectorField
from pixsearch.store.results import QueryOptions, SearchResult
from pixsearch.store.session import read_snapshot
from pixsearch.store.table import Table


_LOOKUP_CHUNK = 1000  # keys per lookup query
# What the database (or the driver, encoding them) refuses a batch for that is about its rows, not the connection:
# bad bytes in a string, a value out of range, a vector of the wrong width. Connection and server errors are not.
_ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded, ValueError,
               UnicodeError)


class RowsRefused(ValueError):
    """A write was refused for something in its rows; nothing of it was written. The message is the first line of
    the database's (or the driver's) reason; the original error is the cause."""

    @classmethod
    def from_error(cls, exc: BaseException) -> "RowsRefused":
        text = str(exc).strip()
        return cls(text.splitlines()[0] if text else type(exc).__name__)


class Reader:
    """What one search reads, all from one snapshot (see IndexStore.reader). `spec`: the index definition and
    settings its queries run with."""

    def __init__(self, spec: IndexSpec, table: Table, conn: psycopg.Connection, regions: RegionTable | None):
        self.spec = spec
        self._table = table
        self._conn = conn
        self._regions = regions

    def search(self, field: str | None, vector: Any, k: int, *, filter: Filter | None = None,
               options: QueryOptions = QueryOptions(), count_if_short: bool = True) -> SearchResult:
        return self._table.knn.search(self._conn, field, vector, k, filter=filter, options=options,
                                      count_if_short=count_if_short, in_snapshot=True)

    def search_regions(self, field: str | None, vector: Any, k: int, *, filter: Filter | None = None,
                       options: QueryOptions = QueryOptions()) -> SearchResult:
        if self._regions is None:
            raise ValueError(f"index {self._table.spec.name!r} has no regions")
        return self._regions.search(self._conn, field, vector, k, filter=filter, options=options, in_snapshot=True)

    def keyword_search(self, text: str, limit: int, *, filter: Filter | None = None,
                       keyword_list: str | None = None) -> list[tuple[str, float]]:
        return self._table.queries.keyword_search(self._conn, text, limit, filter=filter, keyword_list=keyword_list)

    def browse(self, limit: int, offset: int = 0, *, filter: Filter | None = None,
               sort: Sequence[tuple[str, bool]] = ()) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        return self._table.queries.browse(self._conn, limit, offset, filter=filter, sort=sort)

    def fetch(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self._table.queries.fetch(self._conn, ids)

    def select(self, ids: Sequence[str], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self._table.queries.select(self._conn, ids, columns)

    def facet_counts(self, field: str, *, interval: str | None = None, limit: int = 10,
                     filter: Filter | None = None, ids: Sequence[str] | None = None) -> list[tuple[Any, int]]:
        return self._table.queries.facet_counts(self._conn, field, interval=interval, limit=limit, filter=filter, ids=ids)

    def build_progress(self) -> dict[str, Any] | None:
        return self._table.definition.build_progress(self._conn)

    def count_vectors(self, field: str) -> int:
        return self._table.stats.count_vectors(self._conn, field)

    def iter_vectors(self, field: str) -> Iterator[tuple[list[str], np.ndarray]]:
        return self._table.knn.iter_vectors(self._conn, field)


class IndexStore:
    """The rows of one index (`spec`) in `db`. Cheap to make: it holds no connection between calls."""

    def __init__(self, db: Database, spec: IndexSpec):
        self.db = db
        self.spec = spec
        self._table = Table(spec)
        self._regions = RegionTable(spec) if spec.settings.get("regions") else None

    # -- what needs no database ----------------------------------------------------------------------------------
    @property
    def retrievable(self) -> list[str]:
        return self._table.shape.retrievable

    def ann_index_name(self, vf: VectorField) -> str:
        return self._table.shape.ann_index_name(vf)

    def ann_index_names(self) -> list[str]:
        return self._table.shape.ann_index_names()

    @property
    def distributed(self) -> bool:
        """Whether the table is sharded across Citus workers."""
        return self._table.shape.distributed

    @property
    def has_regions(self) -> bool:
        return self._regions is not None

    # -- reads ---------------------------------------------------------------------------------------------------
    @contextmanager
    def reader(self, *, current_settings: bool = False) -> Iterator[Reader]:
        """One snapshot for everything read inside the block. current_settings: the index's settings are read in
        the snapshot too (one small statement; Reader.spec has them) and its queries run with them, so a search's
        tuned knobs, ANN builds and bulk-load mark are those of the rows it reads, not of when this store was made."""
        with read_snapshot(self.db) as conn:
            if not current_settings:
                yield Reader(self.spec, self._table, conn, self._regions)
                return
            spec = replace(self.spec, settings=read_settings(conn, self.spec.name))
            regions = RegionTable(spec) if spec.settings.get("regions") else None
            yield Reader(spec, Table(spec), conn, regions)

    def _one(self, read: Callable[[psycopg.Connection], Any]) -> Any:
        """A read of one statement (or a few that need not agree): a pooled connection, no snapshot."""
        with self.db.connection() as conn:
            return read(conn)

    def count(self) -> int:
        return self._one(self._table.stats.count)

    def stats(self) -> dict[str, Any]:
        return self._one(self._table.stats.stats)

    def select(self, ids: Sequence[str], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self._one(lambda conn: self._table.queries.select(conn, ids, columns))

    def distinct_values(self, column: str) -> list[Any]:
        return self._one(lambda conn: self._table.queries.distinct_values(conn, column))

    def rows_where_prefix(self, column: str, prefix: str) -> list[tuple[str, Any]]:
        return self._one(lambda conn: self._table.queries.rows_where_prefix(conn, column, prefix))

    def keys_missing(self, columns: Sequence[str], after: str | None, limit: int, extra: Sequence[str] = ()
                     ) -> list[tuple[str, dict[str, Any]]]:
        return self._one(lambda conn: self._table.queries.keys_missing(conn, columns, after, limit, extra=extra))

    def not_captioned(self, settings_id: str, after: str | None, limit: int, extra: Sequence[str] = ()
                      ) -> list[tuple[str, dict[str, Any]]]:
        """Photos without a generated caption of their bytes by these captioner settings, a page at a time."""
        return self._one(lambda conn: self._table.queries.not_captioned(conn, settings_id, after, limit, extra=extra))

    def count_not_captioned(self, settings_id: str) -> int:
        return self._one(lambda conn: self._table.queries.count_not_captioned(conn, settings_id))

    def count_missing(self, columns: Sequence[str]) -> int:
        return self._one(lambda conn: self._table.stats.count_missing(conn, columns))

    def ann_indexes_ready(self) -> dict[str, bool]:
        return self._one(self._table.definition.ann_indexes_ready)

    def ann_index_exists(self, vf: VectorField) -> bool:
        return self._one(lambda conn: self._table.definition.ann_index_exists(conn, vf))

    def near_pairs(self, field: str, max_distance: float, k: int) -> list[tuple[str, str, float]]:
        return self._one(lambda conn: self._table.knn.near_pairs(conn, field, max_distance, k))

    def sample_vectors(self, vf: VectorField, n: int) -> list[tuple]:
        return self._one(lambda conn: self._table.knn.sample_vectors(conn, vf, n))

    def search(self, field: str | None, vector: Any, k: int, *, filter: Filter | None = None,
               options: QueryOptions = QueryOptions(), count_if_short: bool = True) -> SearchResult:
        """One kNN query on a connection of its own (no snapshot: the common case is one statement)."""
        return self._one(lambda conn: self._table.knn.search(conn, field, vector, k, filter=filter, options=options,
                                                             count_if_short=count_if_short, in_snapshot=False))

    def explain(self, field: str | None, vector: Any, k: int, *, filter: Filter | None = None,
                options: QueryOptions = QueryOptions(), analyze: bool = False) -> str:
        return self._one(lambda conn: self._table.knn.explain(conn, field, vector, k, filter=filter, options=options,
                                                              analyze=analyze))

    # -- photo lookups for incremental ingest: one query per batch, not per file --------------------------------
    def stored_states(self, ids: Sequence[str]) -> dict[str, StoredState]:
        """What ingest compares files with, by key: one connection, a query per _LOOKUP_CHUNK keys."""
        def read(conn: psycopg.Connection) -> dict[str, StoredState]:
            states: dict[str, StoredState] = {}
            for start in range(0, len(ids), _LOOKUP_CHUNK):
                states.update(photos.stored_states(conn, self._table, ids[start:start + _LOOKUP_CHUNK]))
            return states

        return self._one(read)

    def same_content(self, digests: Iterable[str]) -> dict[str, list[StoredState]]:
        """The photos whose file had each of these content hashes when it was indexed, by hash."""
        return self._one(lambda conn: photos.same_content(conn, self._table, list(digests)))

    def paths_not_normal(self) -> list[StoredState]:
        """The photos whose stored path may be spelled other than normally (ingest decides which really are)."""
        return self._one(lambda conn: photos.paths_not_normal(conn, self._table))

    def paths_under(self, prefix: str) -> list[tuple[str, str]]:
        return self._one(lambda conn: photos.paths_under(conn, self._table, prefix))

    # -- writes, each its own transaction --------------------------------------------------------------------------
    def _write(self, write: Callable[[psycopg.Connection], Any]) -> Any:
        with self.db.connection() as conn, conn.transaction():
            return write(conn)

    def write(self, rows: Sequence[dict[str, Any]], *, columns: Sequence[str] | None = None,
              insert_missing: bool = True) -> set[str]:
        """Whole documents (columns=None) or some columns of them, in one transaction (TableWrites.write)."""
        return self._write(lambda conn: self._table.writes.write(conn, list(rows), columns=columns,
                                                                 insert_missing=insert_missing))

    def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0  # not even an empty transaction
        return self._write(lambda conn: self._table.writes.delete(conn, list(ids)))

    def write_photos(self, records: Sequence[PhotoRecord]) -> None:
        """Photo rows in one transaction; RowsRefused when something in them is refused (nothing written then)."""
        try:
            self._write(lambda conn: photos.write_photos(conn, self._table, records))
        except _ROW_ERRORS as exc:
            raise RowsRefused.from_error(exc) from exc

    def touch(self, changes: Sequence[tuple[str, int, int]]) -> None:
        """New size/mtime of files whose content hash shows they did not really change: (key, size, mtime_ns)
        each, all in one transaction and one round trip."""
        if changes:
            self._write(lambda conn: photos.touch(conn, self._table, changes))

    def move_photos(self, moves: Sequence[tuple[str, PhotoLocation]]) -> None:
        """Rows follow their moved files, all in one transaction (photos.move_photos)."""
        if moves:
            self._write(lambda conn: photos.move_photos(conn, self._table, moves))

    def fold_photos(self, moves: Sequence[tuple[str, PhotoLocation]], duplicates: Sequence[str]) -> int:
        """Rows of one photo stored under two spellings of its path made one, in one transaction: the `duplicates`
        removed, the `moves` applied; the number removed."""
        if not moves and not duplicates:
            return 0
        return self._write(lambda conn: photos.fold_photos(conn, self._table, moves, duplicates))

    def update_descriptions(self, rows: Sequence[dict[str, Any]], caption_field: str | None) -> None:
        self._write(lambda conn: photos.update_descriptions(conn, self._table, rows, caption_field))

    def create_lookup_indexes(self) -> None:
        self._write(self._table.definition.create_lookup_indexes)

    def analyze(self) -> None:
        """Fresh planner statistics after a large write (see TableStats.analyze)."""
        self._one(self._table.stats.analyze)

    # -- ANN indexes -------------------------------------------------------------------------------------------------
    def drop_ann_index(self, vf: VectorField) -> bool:
        return self._write(lambda conn: self._table.definition.drop_ann_index(conn, vf))

    def build_index(self, vf: VectorField, *, progress: Callable[[dict[str, Any]], None] | None = None
                    ) -> dict[str, Any]:
        return self._table.definition.build_index(self.db, vf, progress=progress)

    # -- regions (a child table keyed by photo and region) ---------------------------------------------------------
    def ensure_regions(self) -> str:
        """Create the regions table if it is not there yet; its name."""
        regions = self._regions or RegionTable(self.spec)
        regions.ensure(self.db)
        return regions.spec.table_name

    def replace_regions(self, photo_keys: list[str], rows: list[dict[str, Any]], source: str) -> None:
        """In one transaction: the regions of these photos from `source` replaced by `rows`."""
        (self._regions or RegionTable(self.spec)).replace_photos(self.db, photo_keys, rows, source)

    def analyze_regions(self) -> None:
        regions = self._regions or RegionTable(self.spec)
        self._one(regions.analyze)

    # -- faces and people (store/faces.py) ---------------------------------------------------------------------------
    @property
    def faces(self) -> FaceStore:
        """Faces (regions of source `faces`) and people; the spec's settings must say the regions have faces."""
        return FaceStore(self.db, FaceTable(self._table, self._regions or RegionTable(self.spec)))

"""DocumentTable: the old connection-taking face of an index table, kept for callers outside store/ that still hand
in their own connection (search/, service/, ingest/ and some tests while they move to IndexStore). Delete it with
its last caller.

Everything here delegates to the parts (store/table.py). The parts are told whether they run inside the caller's
snapshot; only this legacy face, which cannot be told, reads it off the connection (`_in_transaction`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import psycopg
from psycopg import sql

from pixsearch.db import Database
from pixsearch.store.definition import maintenance_work_mem_mb as _maintenance_work_mem_mb
from pixsearch.store.definition import parallel_workers
from pixsearch.store.filters import Filter
from pixsearch.store.knn import DEFAULT_EF_SEARCH, EXACT_BELOW_SHARE, MAX_EF_SEARCH, knn_sql
from pixsearch.store.queries import browse_sql
from pixsearch.store.results import Hit, HitList, QueryOptions, SearchResult, as_query_vector, similarity
from pixsearch.store.schema import Field, IndexSpec, VectorField
from pixsearch.store.session import read_snapshot, set_local, set_session
from pixsearch.store.shape import SEARCH_TEXT, derived_identifier, keyword_column
from pixsearch.store.table import Table

__all__ = [
    "DEFAULT_EF_SEARCH", "EXACT_BELOW_SHARE", "MAX_EF_SEARCH", "SEARCH_TEXT", "DocumentTable", "Hit", "HitList",
    "QueryOptions", "SearchResult", "_maintenance_work_mem_mb", "as_query_vector", "derived_identifier",
    "iter_chunks", "keyword_column", "parallel_workers", "read_snapshot", "set_local", "set_session", "similarity",
]


def iter_chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _in_transaction(conn: psycopg.Connection) -> bool:
    """Whether a caller's own connection is inside a transaction it opened (its snapshot): the legacy face's guess."""
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


class DocumentTable:
    def __init__(self, spec: IndexSpec):
        self.parts = Table(spec)

    @property
    def spec(self) -> IndexSpec:
        return self.parts.spec

    @spec.setter
    def spec(self, spec: IndexSpec) -> None:
        self.parts = Table(spec)

    # the parts, for store/ functions that take a Table (photos.py)
    shape = property(lambda self: self.parts.shape)
    queries = property(lambda self: self.parts.queries)
    writes = property(lambda self: self.parts.writes)
    knn = property(lambda self: self.parts.knn)
    definition = property(lambda self: self.parts.definition)
    table = property(lambda self: self.parts.shape.table)
    key = property(lambda self: self.parts.shape.key)
    distributed = property(lambda self: self.parts.shape.distributed)
    retrievable = property(lambda self: self.parts.shape.retrievable)
    searchable = property(lambda self: self.parts.shape.searchable)
    text_columns = property(lambda self: self.parts.shape.text_columns)

    def derived_name(self, *parts: str) -> str:
        return self.parts.shape.derived_name(*parts)

    def derived_names(self) -> list[str]:
        return self.parts.shape.derived_names()

    def ann_index_name(self, vf: VectorField) -> str:
        return self.parts.shape.ann_index_name(vf)

    def ann_index_names(self) -> list[str]:
        return self.parts.shape.ann_index_names()

    def knn_sql(self, vf: VectorField, where: sql.Composable | None, *, exact: bool = False) -> sql.Composed:
        return knn_sql(self.parts.shape, vf, where, exact=exact)

    def browse_sql(self, sort: Sequence[tuple[str, bool]], where: sql.Composable | None = None) -> sql.Composed:
        return browse_sql(self.parts.shape, sort, where)

    # -- definition ----------------------------------------------------------------------------------------------
    def create(self, conn: psycopg.Connection) -> None:
        self.parts.definition.create(conn)

    def add_columns(self, conn: psycopg.Connection, fields: Sequence[Field], vector_fields: Sequence[VectorField]
                    ) -> None:
        self.parts.definition.add_columns(conn, fields, vector_fields)

    def drop_columns(self, conn: psycopg.Connection, names: Sequence[str]) -> None:
        self.parts.definition.drop_columns(conn, names)

    def create_lookup_indexes(self, conn: psycopg.Connection) -> None:
        self.parts.definition.create_lookup_indexes(conn)

    def ann_indexes_ready(self, conn: psycopg.Connection) -> dict[str, bool]:
        return self.parts.definition.ann_indexes_ready(conn)

    def ann_index_exists(self, conn: psycopg.Connection, vf: VectorField) -> bool:
        return self.parts.definition.ann_index_exists(conn, vf)

    def drop_ann_index(self, conn: psycopg.Connection, vf: VectorField) -> bool:
        return self.parts.definition.drop_ann_index(conn, vf)

    def build_index(self, db: Database, vf: VectorField, *, progress: Callable[[dict[str, Any]], None] | None = None
                    ) -> dict[str, Any]:
        return self.parts.definition.build_index(db, vf, progress=progress)

    def build_progress(self, conn: psycopg.Connection) -> dict[str, Any] | None:
        return self.parts.definition.build_progress(conn)

    def rename_to(self, conn: psycopg.Connection, renamed: IndexSpec) -> None:
        self.parts.definition.rename_to(conn, self.parts.shape.renamed(renamed))

    # -- writes --------------------------------------------------------------------------------------------------
    def write(self, conn: psycopg.Connection, rows: Sequence[dict[str, Any]], *, columns: Sequence[str] | None = None,
              insert_missing: bool = True) -> set[str]:
        return self.parts.writes.write(conn, rows, columns=columns, insert_missing=insert_missing)

    def update_rows(self, conn: psycopg.Connection, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.parts.writes.update_rows(conn, columns, rows)

    def delete(self, conn: psycopg.Connection, ids: Sequence[str]) -> int:
        return self.parts.writes.delete(conn, ids)

    def rekey(self, conn: psycopg.Connection, moves: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self.parts.writes.rekey(conn, moves)

    def rebuild_text(self, conn: psycopg.Connection, keys: Sequence[str]) -> None:
        self.parts.writes.rebuild_text(conn, keys)

    # -- counts and sizes ----------------------------------------------------------------------------------------
    def analyze(self, conn: psycopg.Connection) -> None:
        self.parts.stats.analyze(conn)

    def count(self, conn: psycopg.Connection) -> int:
        return self.parts.stats.count(conn)

    def count_vectors(self, conn: psycopg.Connection, field_name: str) -> int:
        return self.parts.stats.count_vectors(conn, field_name)

    def count_missing(self, conn: psycopg.Connection, columns: Sequence[str]) -> int:
        return self.parts.stats.count_missing(conn, columns)

    def stats(self, conn: psycopg.Connection) -> dict[str, Any]:
        return self.parts.stats.stats(conn)

    # -- reads ---------------------------------------------------------------------------------------------------
    def select(self, conn: psycopg.Connection, ids: Sequence[str], columns: Sequence[str]
               ) -> dict[str, dict[str, Any]]:
        return self.parts.queries.select(conn, ids, columns)

    def fetch(self, conn: psycopg.Connection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.parts.queries.fetch(conn, ids)

    def keys_missing(self, conn: psycopg.Connection, columns: Sequence[str], after: str | None, limit: int,
                     extra: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
        return self.parts.queries.keys_missing(conn, columns, after, limit, extra=extra)

    def rows_where_in(self, conn: psycopg.Connection, column: str, values: Sequence[Any], columns: Sequence[str]
                      ) -> list[dict[str, Any]]:
        return self.parts.queries.rows_where_in(conn, column, values, columns)

    def rows_where_prefix(self, conn: psycopg.Connection, column: str, prefix: str) -> list[tuple[str, Any]]:
        return self.parts.queries.rows_where_prefix(conn, column, prefix)

    def distinct_values(self, conn: psycopg.Connection, column: str) -> list[Any]:
        return self.parts.queries.distinct_values(conn, column)

    def keyword_search(self, conn: psycopg.Connection, text: str, limit: int, *, filter: Filter | None = None,
                       keyword_list: str | None = None) -> list[tuple[str, float]]:
        return self.parts.queries.keyword_search(conn, text, limit, filter=filter, keyword_list=keyword_list)

    def browse(self, conn: psycopg.Connection, limit: int, offset: int = 0, *, filter: Filter | None = None,
               sort: Sequence[tuple[str, bool]] = ()) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        return self.parts.queries.browse(conn, limit, offset, filter=filter, sort=sort)

    def facet_counts(self, conn: psycopg.Connection, field_name: str, *, interval: str | None = None,
                     limit: int = 10, filter: Filter | None = None, ids: Sequence[str] | None = None
                     ) -> list[tuple[Any, int]]:
        return self.parts.queries.facet_counts(conn, field_name, interval=interval, limit=limit, filter=filter,
                                               ids=ids)

    # -- vectors -------------------------------------------------------------------------------------------------
    def search(self, conn: psycopg.Connection, field_name: str | None, vector: Any, k: int, *,
               filter: Filter | None = None, options: QueryOptions = QueryOptions(), count_if_short: bool = True
               ) -> SearchResult:
        return self.parts.knn.search(conn, field_name, vector, k, filter=filter, options=options,
                                     count_if_short=count_if_short, in_snapshot=_in_transaction(conn))

    def explain(self, conn: psycopg.Connection, field_name: str | None, vector: Any, k: int, *,
                filter: Filter | None = None, options: QueryOptions = QueryOptions(), analyze: bool = False) -> str:
        return self.parts.knn.explain(conn, field_name, vector, k, filter=filter, options=options, analyze=analyze)

    def near_pairs(self, conn: psycopg.Connection, field_name: str, max_distance: float, k: int = 10
                   ) -> list[tuple[str, str, float]]:
        return self.parts.knn.near_pairs(conn, field_name, max_distance, k)

    def iter_vectors(self, conn: psycopg.Connection, field_name: str, batch: int = 10_000
                     ) -> Iterator[tuple[list[str], np.ndarray]]:
        return self.parts.knn.iter_vectors(conn, field_name, batch)

    def sample_vectors(self, conn: psycopg.Connection, vf: VectorField, n: int, seed: float = 0.42) -> list[tuple]:
        return self.parts.knn.sample_vectors(conn, vf, n, seed)


"""All SQL lives here. Identifiers reach SQL through psycopg.sql, values through parameters."""
from pixsearch.store.filters import And, AnyEq, Compare, Filter, FilterError, In, Not, Or, Prefix, check_filter
from pixsearch.store.index_store import IndexStore, Reader, RowsRefused
from pixsearch.store.photos import PhotoLocation, PhotoRecord, StoredState
from pixsearch.store.registry import (
    IndexExistsError,
    change_definition,
    distribute_index,
    IndexNotFoundError,
    create_index,
    delete_index,
    get_index,
    list_indexes,
    migrate,
    rename_index,
    update_settings,
)
from pixsearch.store.schema import PHOTO_FIELDS, Field, IndexSpec, SchemaError, VectorField
from pixsearch.store.results import Hit, QueryOptions, SearchResult
from pixsearch.store.session import read_snapshot

__all__ = [
    "PHOTO_FIELDS",
    "And",
    "AnyEq",
    "Compare",
    "Field",
    "Filter",
    "FilterError",
    "Hit",
    "In",
    "IndexStore",
    "IndexExistsError",
    "IndexNotFoundError",
    "IndexSpec",
    "Not",
    "Or",
    "PhotoLocation",
    "PhotoRecord",
    "Prefix",
    "QueryOptions",
    "Reader",
    "RowsRefused",
    "SchemaError",
    "SearchResult",
    "StoredState",
    "VectorField",
    "change_definition",
    "check_filter",
    "distribute_index",
    "create_index",
    "delete_index",
    "get_index",
    "list_indexes",
    "migrate",
    "read_snapshot",
    "rename_index",
    "update_settings",
]

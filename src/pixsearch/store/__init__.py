"""All SQL lives here. Identifiers reach SQL through psycopg.sql, values through parameters."""
from pixsearch.store.registry import (
    IndexExistsError,
    IndexNotFoundError,
    IndexSpec,
    VectorField,
    create_index,
    delete_index,
    get_index,
    list_indexes,
    migrate,
)
from pixsearch.store.photos import Hit, PhotoRecord, PhotoTable, StoredState

__all__ = [
    "Hit",
    "IndexExistsError",
    "IndexNotFoundError",
    "IndexSpec",
    "PhotoRecord",
    "PhotoTable",
    "StoredState",
    "VectorField",
    "create_index",
    "delete_index",
    "get_index",
    "list_indexes",
    "migrate",
]

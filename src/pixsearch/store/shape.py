"""What every part of an index's table shares: its identifiers, its columns, and the names derived from its name.

The parts (definition.py, queries.py, knn.py, writes.py, stats.py) build their statements from a TableShape and
nothing else, so each statement is a pure function of the index spec (and the call's options): sql_catalog.py
renders them without a database for the SQL snapshots in tests/sql/.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Sequence

from psycopg import sql

from pixsearch.store.schema import BROWSE_ORDER, LOOKUP_COLUMNS, Field, IndexSpec, VectorField

SEARCH_TEXT = "search_text"  # the tsvector column keyword search reads, maintained on every write
INDEXED_AT = "indexed_at"
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


def derived_identifier(*parts: str) -> str:
    """`parts` joined by '_', within PostgreSQL's 63-byte identifier limit. Longer names would be cut silently, and
    two cut names could collide: those end in a hash of the full name instead."""
    name = "_".join(parts)
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return name[: MAX_IDENTIFIER_BYTES - len(digest) - 1] + "_" + digest


def keyword_column(f: Field) -> str:
    """The tsvector column of a field with a keyword list of its own."""
    return f"{f.name}_tsv"


def where_clause(where: sql.Composable | None) -> sql.Composable:
    return sql.SQL(" WHERE {}").format(where) if where is not None else sql.SQL("")


def operator(symbol: str) -> sql.SQL:
    # Jaccard's <%> holds a '%', which psycopg would read as a placeholder unless doubled.
    return sql.SQL(symbol.replace("%", "%%"))


def identifiers(names: Sequence[str]) -> sql.Composed:
    """`a, b, c` as quoted identifiers."""
    return sql.SQL(", ").join(map(sql.Identifier, names))


@dataclass(frozen=True)
class TableShape:
    """One index table as SQL sees it. conflict_columns: the unique key upserts match on (None: the key field; a
    region table's is (photo key, region key)). extra_indexes: derived-name parts of indexes a kind of table adds
    beyond the spec's own (a region table's label index), so a rename moves them too."""

    spec: IndexSpec
    conflict_columns: tuple[str, ...] | None = None
    extra_indexes: tuple[tuple[str, ...], ...] = ()

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(self.spec.table_name)

    @property
    def key(self) -> sql.Identifier:
        return sql.Identifier(self.spec.key_field)

    @property
    def conflict_target(self) -> sql.Composable:
        return identifiers(self.conflict_columns or (self.spec.key_field,))

    @property
    def distributed(self) -> bool:
        """Sharded across Citus workers (by its key): settings must be propagated, sizes summed over shards."""
        return bool(self.spec.settings.get("distribution"))

    def renamed(self, spec: IndexSpec) -> "TableShape":
        """The same kind of table under another spec (a renamed index)."""
        return replace(self, spec=spec)

    # -- columns -------------------------------------------------------------------------------------------------
    @property
    def retrievable(self) -> list[str]:
        return [f.name for f in self.spec.fields if f.retrievable]

    @property
    def searchable(self) -> list[Field]:
        return [f for f in self.spec.fields if f.searchable]

    @property
    def text_columns(self) -> list[tuple[str, list[Field]]]:
        """The tsvector columns keyword search reads, each with the fields it is made from: the general list's
        (every searchable field) and one per field with a keyword list of its own."""
        columns = [(SEARCH_TEXT, self.searchable)] if self.searchable else []
        return columns + [(keyword_column(f), [f]) for f in self.spec.fields if f.keyword_list]

    @property
    def all_columns(self) -> list[str]:
        """Every column of the table, in the order CREATE TABLE makes them."""
        names = [self.spec.key_field, *(f.name for f in self.spec.fields), INDEXED_AT]
        names += [column for column, _ in self.text_columns]
        return names + [vf.name for vf in self.spec.vector_fields]

    @property
    def write_columns(self) -> dict[str, str]:
        """What a write may set, each with its COPY type: the key, the fields, the vectors."""
        columns = [(self.spec.key_field, "text")] + [(f.name, f.copy_type) for f in self.spec.fields]
        return dict(columns + [(vf.name, vf.column_type) for vf in self.spec.vector_fields])

    # -- names derived from the table's -----------------------------------------------------------------------
    def derived_name(self, *parts: str) -> str:
        """The name of something belonging to the table (its indexes): `<table>_<parts>` (see derived_identifier)."""
        return derived_identifier(self.spec.table_name, *parts)

    def ann_index_name(self, vf: VectorField) -> str:
        return self.derived_name(vf.name, vf.algorithm)

    def ann_index_names(self) -> list[str]:
        return [self.ann_index_name(vf) for vf in self.spec.vector_fields if vf.algorithm != "exact"]

    def lookup_columns(self) -> list[str]:
        """The LOOKUP_COLUMNS of this kind of table that it has."""
        return [c for c in LOOKUP_COLUMNS.get(self.spec.kind, ()) if any(f.name == c for f in self.spec.fields)]

    def derived_names(self) -> list[str]:
        """Every name derived_name gives this table's indexes (rename moves them all)."""
        names = self.ann_index_names()
        names += [self.derived_name(column, "gin") for column, _ in self.text_columns]
        names += [self.derived_name(f.name, "trgm") for f in self.searchable if f.type == "string"]
        if self.spec.kind in BROWSE_ORDER:
            names.append(self.derived_name("browse"))
        names += [self.derived_name(column) for column in LOOKUP_COLUMNS.get(self.spec.kind, ())]
        return names + [self.derived_name(*parts) for parts in self.extra_indexes]

    # -- expressions shared by several statements -------------------------------------------------------------
    def indexed_expression(self, vf: VectorField, query: sql.Composable | None = None) -> sql.Composable:
        """The column (or for bit storage its binary quantisation) as the ANN index sees it; with `query`, the
        matching expression for the query vector."""
        target = sql.Identifier(vf.name) if query is None else query
        if vf.storage == "bit":
            return sql.SQL("(binary_quantize({})::bit({}))").format(target, sql.Literal(vf.dims))
        return target

    def document_text(self, source: sql.Composable, fields: Sequence[Field]) -> sql.Composable:
        """SQL for the text keyword search sees in `fields` of the row `source`: punctuation turned into spaces
        (file names like IMG_2034-beach.jpg become words), arrays joined."""
        parts = []
        for f in fields:
            column = sql.SQL("{}.{}").format(source, sql.Identifier(f.name))
            if f.type.endswith("[]"):
                column = sql.SQL("array_to_string({}, ' ')").format(column)
            parts.append(sql.SQL("regexp_replace(coalesce({}, ''), '[^[:alnum:]]+', ' ', 'g')").format(column))
        text = sql.SQL("unaccent(concat_ws(' ', {}))").format(sql.SQL(", ").join(parts))
        return sql.SQL("(to_tsvector('simple', {0}) || to_tsvector('english', {0}))").format(text)

    def text_assignments(self, columns: Sequence[tuple[str, Sequence[Field]]]) -> sql.Composable:
        """`column = <its text>, ...`: keyword text columns recomputed from the row's own fields."""
        return sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(column), self.document_text(self.table, fields))
                                  for column, fields in columns)

    def browse_order(self, sort: Sequence[tuple[str, bool]]) -> list[sql.Composable]:
        """ORDER BY terms of a listing: the fields (missing values last), then newest indexed first, then the key."""
        order = [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL("DESC NULLS LAST" if descending else "ASC NULLS LAST"))
                 for name, descending in sort]
        return order + [sql.SQL("indexed_at DESC"), self.key]

"""Reads of an index's rows other than kNN: keyword search, listings, facets, documents by key, lookups by value."""
from __future__ import annotations

import re
from typing import Any, Sequence

import psycopg
from psycopg import sql

from pixsearch.store.filters import Filter, compile_filter
from pixsearch.store.schema import SchemaError
from pixsearch.store.shape import SEARCH_TEXT, TableShape, keyword_column, where_clause
from pixsearch.store.stats import missing_condition

FACET_INTERVALS = ("year", "month", "day")
# Full-text query of the words of the text, any of which may match (Azure's default searchMode=any).
ANY_WORD_QUERY = sql.SQL("websearch_to_tsquery('english', unaccent(%(any_word)s))")


# -- statements ---------------------------------------------------------------------------------------------------
def keyword_sql(shape: TableShape, where: sql.Composable | None, keyword_list: str | None = None) -> sql.Composed:
    """Full-text (english stems, accents folded) and trigram (partial names) matches, best first (parameters: text,
    any_word, limit and the filter's).

    Score: ts_rank_cd of the full-text match (more words matched, closer together, rank higher) plus the best word
    similarity of the text to a searchable string. keyword_list: the list of the fields that have that keyword list
    of their own (full-text only) instead of the general one."""
    columns, strings = _keyword_columns(shape, keyword_list)
    t = sql.Placeholder("text")
    similarity_terms = [sql.SQL("coalesce(word_similarity({}, {}), 0)").format(t, c) for c in strings]
    similarity_sql = (
        sql.SQL("greatest({})").format(sql.SQL(", ").join(similarity_terms)) if similarity_terms else sql.SQL("0"))
    matches = [sql.SQL("{} @@ {}").format(sql.Identifier(c), ANY_WORD_QUERY) for c in columns]
    matches += [sql.SQL("{} <%% {}").format(t, c) for c in strings]
    condition = sql.SQL("({})").format(sql.SQL(" OR ").join(matches))
    if where is not None:
        condition = sql.SQL("{} AND {}").format(condition, where)
    rank = sql.SQL(" + ").join(sql.SQL("coalesce(ts_rank_cd({}, {}), 0)").format(sql.Identifier(c), ANY_WORD_QUERY)
                               for c in columns)
    return sql.SQL(
        "SELECT {key}, {rank} + {similarity} AS score FROM {t} WHERE {condition} "
        "ORDER BY score DESC, {key} LIMIT %(limit)s"
    ).format(key=shape.key, rank=rank, similarity=similarity_sql, t=shape.table, condition=condition)


def _keyword_columns(shape: TableShape, keyword_list: str | None) -> tuple[list[str], list[sql.Identifier]]:
    """The tsvector columns a keyword search matches, and the string columns it matches by trigrams."""
    spec = shape.spec
    if keyword_list is not None:
        own = [f for f in spec.fields if f.keyword_list == keyword_list]
        if not own:
            raise SchemaError(f"index {spec.name!r} has no {keyword_list!r} keyword list")
        return [keyword_column(f) for f in own], []
    if not shape.searchable:
        raise SchemaError(f"index {spec.name!r} has no searchable fields: keyword search needs some")
    return [SEARCH_TEXT], [sql.Identifier(f.name) for f in shape.searchable if f.type == "string"]


def any_word(text: str) -> str:
    """The words of the text joined by `or` for websearch_to_tsquery: any may match (the word "or" itself dropped)."""
    return " or ".join(w for w in re.findall(r"[^\W_]+", text) if w.lower() != "or")


def browse_sql(shape: TableShape, sort: Sequence[tuple[str, bool]], where: sql.Composable | None = None
               ) -> sql.Composed:
    """One page of a listing (parameters: limit, offset and the filter's)."""
    for name, _ in sort:
        if not shape.spec.field(name).sortable:
            raise SchemaError(f"field {name!r} is not sortable in index {shape.spec.name!r}")
    columns = [shape.key] + [sql.Identifier(c) for c in shape.retrievable]
    return sql.SQL("SELECT {} FROM {}{} ORDER BY {} LIMIT %(limit)s OFFSET %(offset)s").format(
        sql.SQL(", ").join(columns), shape.table, where_clause(where), sql.SQL(", ").join(shape.browse_order(sort)))


def count_where_sql(shape: TableShape, where: sql.Composable | None) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}{}").format(shape.table, where_clause(where))


def facet_sql(shape: TableShape, field_name: str, where: sql.Composable | None, *, interval: str | None = None,
              among_ids: bool = False) -> sql.Composed:
    """(value, count) pairs, most frequent first (parameters: facet_limit, the filter's, facet_ids when among_ids).
    Collections count each element; `interval` (year, month, day) buckets a datetime field."""
    f = shape.spec.field(field_name)
    if not f.facetable:
        raise SchemaError(f"field {field_name!r} is not facetable in index {shape.spec.name!r}")
    value: sql.Composable = sql.Identifier(f.name)
    if f.type.endswith("[]"):
        value = sql.SQL("unnest({})").format(value)
    elif interval is not None:
        if f.type != "datetime" or interval not in FACET_INTERVALS:
            raise SchemaError("interval (year, month, day) applies to datetime fields")
        value = sql.SQL("date_trunc({}, {} AT TIME ZONE 'UTC')").format(sql.Literal(interval), value)
    conditions = [sql.SQL("{} IS NOT NULL").format(sql.Identifier(f.name))]
    if where is not None:
        conditions.append(where)
    if among_ids:
        conditions.append(sql.SQL("{} = ANY(%(facet_ids)s)").format(shape.key))
    return sql.SQL(
        "SELECT value, count(*) AS n FROM (SELECT {value} AS value FROM {t} WHERE {cond}) AS v "
        "WHERE value IS NOT NULL GROUP BY value ORDER BY n DESC, value LIMIT %(facet_limit)s"
    ).format(value=value, t=shape.table, cond=sql.SQL(" AND ").join(conditions))


def select_sql(shape: TableShape, columns: Sequence[str]) -> sql.Composed:
    """The key and `columns` of the rows whose key is in %s."""
    selected = sql.SQL(", ").join([shape.key, *map(sql.Identifier, columns)])
    return sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s)").format(selected, shape.table, shape.key)


def rows_where_in_sql(shape: TableShape, column: str, columns: Sequence[str]) -> sql.Composed:
    """The key, `column` and `columns` of the rows whose `column` is in %s (by the column's b-tree)."""
    return sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s)").format(
        sql.SQL(", ").join([shape.key, *map(sql.Identifier, [column, *columns])]), shape.table, sql.Identifier(column))


def rows_where_like_sql(shape: TableShape, column: str, columns: Sequence[str]) -> sql.Composed:
    """The key and `columns` of the rows whose `column` matches any of the LIKE patterns in the first %s and none
    of those in the second."""
    return sql.SQL("SELECT {} FROM {} WHERE {c} LIKE ANY(%s) AND NOT {c} LIKE ANY(%s)").format(
        sql.SQL(", ").join([shape.key, *map(sql.Identifier, columns)]), shape.table, c=sql.Identifier(column))


def rows_where_prefix_sql(shape: TableShape, column: str) -> sql.Composed:
    return sql.SQL("SELECT {}, {} FROM {} WHERE starts_with({}, %s)").format(
        shape.key, sql.Identifier(column), shape.table, sql.Identifier(column))


def distinct_values_sql(shape: TableShape, column: str) -> sql.Composed:
    return sql.SQL("SELECT DISTINCT {c} FROM {t} WHERE {c} IS NOT NULL").format(c=sql.Identifier(column), t=shape.table)


def keys_missing_sql(shape: TableShape, columns: Sequence[str], *, after: bool, extra: Sequence[str] = ()
                     ) -> sql.Composed:
    """Up to %(limit)s rows in key order (after key %(after)s) where any of `columns` is empty, with `extra`."""
    return sql.SQL("SELECT {key}{extra} FROM {t} WHERE ({missing}){after} ORDER BY {key} LIMIT %(limit)s").format(
        key=shape.key,
        extra=sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(c)) for c in extra),
        t=shape.table,
        missing=missing_condition(columns),
        after=sql.SQL(" AND {} > %(after)s").format(shape.key) if after else sql.SQL(""),
    )


def not_captioned_condition() -> sql.Composed:
    """A photo whose generated caption is not of its bytes by the captioner settings %(settings)s (or that has none)."""
    return sql.SQL("{generated} IS DISTINCT FROM (%(settings)s || ':' || {digest})").format(
        generated=sql.Identifier("generated_from"), digest=sql.Identifier("content_hash"))


def not_captioned_sql(shape: TableShape, *, after: bool, extra: Sequence[str] = ()) -> sql.Composed:
    """Up to %(limit)s photos in key order (after key %(after)s) without a generated caption of their bytes by the
    captioner settings %(settings)s, with `extra`."""
    return sql.SQL("SELECT {key}{extra} FROM {t} WHERE {missing}{after} ORDER BY {key} LIMIT %(limit)s").format(
        key=shape.key,
        extra=sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(c)) for c in extra),
        t=shape.table,
        missing=not_captioned_condition(),
        after=sql.SQL(" AND {} > %(after)s").format(shape.key) if after else sql.SQL(""),
    )


def count_not_captioned_sql(shape: TableShape) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {} WHERE {}").format(shape.table, not_captioned_condition())


# -- execution ----------------------------------------------------------------------------------------------------
class TableQueries:
    def __init__(self, shape: TableShape):
        self.shape = shape

    def keyword_search(self, conn: psycopg.Connection, text: str, limit: int, *, filter: Filter | None = None,
                       keyword_list: str | None = None) -> list[tuple[str, float]]:
        """(key, score) of keyword matches, best first (keyword_sql)."""
        where, params = compile_filter(self.shape.spec, filter)
        statement = keyword_sql(self.shape, where, keyword_list)
        rows = conn.execute(statement, {**params, "any_word": any_word(text), "text": text, "limit": limit})
        return [(row[0], float(row[1])) for row in rows.fetchall()]

    def browse(self, conn: psycopg.Connection, limit: int, offset: int = 0, *, filter: Filter | None = None,
               sort: Sequence[tuple[str, bool]] = ()) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """Documents passing `filter` in `sort` order (missing values last, then newest indexed first), one page of
        (key, fields), plus how many pass the filter in all."""
        where, params = compile_filter(self.shape.spec, filter)
        rows = conn.execute(browse_sql(self.shape, sort, where), {**params, "limit": limit, "offset": offset}).fetchall()
        total = conn.execute(count_where_sql(self.shape, where), params).fetchone()[0]
        return [(row[0], dict(zip(self.shape.retrievable, row[1:]))) for row in rows], total

    def facet_counts(self, conn: psycopg.Connection, field_name: str, *, interval: str | None = None,
                     limit: int = 10, filter: Filter | None = None, ids: Sequence[str] | None = None
                     ) -> list[tuple[Any, int]]:
        """(value, count) pairs, most frequent first, over rows passing `filter` (and among `ids` when given)."""
        where, params = compile_filter(self.shape.spec, filter)
        statement = facet_sql(self.shape, field_name, where, interval=interval, among_ids=ids is not None)
        params = {**params, "facet_limit": limit, **({"facet_ids": list(ids)} if ids is not None else {})}
        return [(row[0], row[1]) for row in conn.execute(statement, params)]

    def fetch(self, conn: psycopg.Connection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Retrievable fields of the given documents."""
        return self.select(conn, ids, self.shape.retrievable) if ids else {}

    def select(self, conn: psycopg.Connection, ids: Sequence[str], columns: Sequence[str]
               ) -> dict[str, dict[str, Any]]:
        """The given columns of the given documents. Results come in binary: a vector is then a block of float32s
        numpy reads as is, instead of text to parse (10,000 x 512 in a fraction of a second)."""
        rows = conn.execute(select_sql(self.shape, columns), (list(ids),), binary=True)
        return {row[0]: dict(zip(columns, row[1:])) for row in rows}

    def rows_where_in(self, conn: psycopg.Connection, column: str, values: Sequence[Any], columns: Sequence[str]
                      ) -> list[dict[str, Any]]:
        """The rows whose `column` is one of `values`, with their key, that column and `columns` (one query)."""
        if not values:
            return []
        others = [c for c in columns if c != column]
        names = [self.shape.spec.key_field, column, *others]
        rows = conn.execute(rows_where_in_sql(self.shape, column, others), (list(values),))
        return [dict(zip(names, row)) for row in rows]

    def rows_where_like(self, conn: psycopg.Connection, column: str, patterns: Sequence[str], columns: Sequence[str],
                        unless: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The rows whose `column` matches any of the LIKE `patterns` and none of `unless`, with their key and
        `columns`."""
        names = [self.shape.spec.key_field, *columns]
        rows = conn.execute(rows_where_like_sql(self.shape, column, columns), (list(patterns), list(unless)))
        return [dict(zip(names, row)) for row in rows]

    def rows_where_prefix(self, conn: psycopg.Connection, column: str, prefix: str) -> list[tuple[str, Any]]:
        return [(row[0], row[1]) for row in conn.execute(rows_where_prefix_sql(self.shape, column), (prefix,))]

    def distinct_values(self, conn: psycopg.Connection, column: str) -> list[Any]:
        return [row[0] for row in conn.execute(distinct_values_sql(self.shape, column))]

    def keys_missing(self, conn: psycopg.Connection, columns: Sequence[str], after: str | None, limit: int,
                     extra: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` rows (in key order, after key `after`) where any of `columns` is empty: what a re-index
        still has to embed. Returns (key, {extra column: value})."""
        statement = keys_missing_sql(self.shape, columns, after=after is not None, extra=extra)
        rows = conn.execute(statement, {"after": after, "limit": limit}).fetchall()
        return [(row[0], dict(zip(extra, row[1:]))) for row in rows]

    def not_captioned(self, conn: psycopg.Connection, settings_id: str, after: str | None, limit: int,
                      extra: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` photos (in key order, after key `after`) whose generated caption is not of their bytes by
        these captioner settings. Returns (key, {extra column: value})."""
        statement = not_captioned_sql(self.shape, after=after is not None, extra=extra)
        rows = conn.execute(statement, {"settings": settings_id, "after": after, "limit": limit}).fetchall()
        return [(row[0], dict(zip(extra, row[1:]))) for row in rows]

    def count_not_captioned(self, conn: psycopg.Connection, settings_id: str) -> int:
        return conn.execute(count_not_captioned_sql(self.shape), {"settings": settings_id}).fetchone()[0]

"""Every statement store/ issues for one index, rendered as finished SQL a reviewer can read (the SQL snapshots in
tests/sql/, regenerated and compared by tests/test_sql_snapshots.py, the way immich reviews its repository SQL).

The statement builders are pure functions of the index's shape and the call's options, so nothing here touches a
database: psycopg renders identifiers and literals without a connection, and placeholders stay placeholders
(`%s` by position, `%(name)s` by name) — no value of a call is ever part of a statement.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

from psycopg import sql

from pixsearch.store import definition, knn, queries, regions, stats, writes
from pixsearch.store.filters import Compare, Filter, compile_filter
from pixsearch.store.photos import DESCRIPTION_COLUMNS, STATE_COLUMNS, moved_columns
from pixsearch.store.results import QueryOptions
from pixsearch.store.schema import BROWSE_ORDER, CAPTION_FIELD, IndexSpec
from pixsearch.store.session import propagated_set_local_sql, set_config_sql
from pixsearch.store.shape import TableShape

EXAMPLE_ROWS = 100_000  # the table size build statements are rendered for (IVFFlat lists, build memory)
EXAMPLE_BUILD_MB, EXAMPLE_BUILD_WORKERS = 1024, 3  # fixed: this machine's own would differ from a reviewer's
EXAMPLE_K = 10


@dataclass(frozen=True)
class Statement:
    method: str  # what issues it, e.g. "VectorQueries.search"
    note: str  # which case of it
    sql: sql.Composable
    settings: dict[str, Any] | None = None  # for a set_config statement: the names and values it is bound to


# -- the catalogue ------------------------------------------------------------------------------------------------
def statements(spec: IndexSpec, example_filter: Filter) -> list[Statement]:
    """Every statement for one index, by part; `example_filter` stands for any filter (its values are placeholders)."""
    shape = TableShape(spec)
    found = [*definition_statements(shape), *knn_statements(shape, example_filter),
             *query_statements(shape, example_filter), *write_statements(shape), *stats_statements(shape)]
    if spec.kind == "photos":
        found += region_statements(spec)
    return found


def definition_statements(shape: TableShape) -> Iterator[Statement]:
    spec, part = shape.spec, "TableDefinition"
    yield Statement(f"{part}.create", "the table", definition.create_table_sql(shape))
    for statement in definition.keyword_indexes_sql(shape):
        yield Statement(f"{part}.create_keyword_indexes", "keyword search indexes", statement)
    if spec.kind in BROWSE_ORDER:
        yield Statement(f"{part}.create", "the listing's b-tree", definition.browse_index_sql(shape))
    yield Statement(f"{part}.create_lookup_indexes", "does the lookup index exist", stats.INDEX_EXISTS_SQL)
    for column in shape.lookup_columns():
        yield Statement(f"{part}.create_lookup_indexes", f"the lookup b-tree of {column}",
                        definition.lookup_index_sql(shape, column))
    for vf in spec.vector_fields:
        if vf.algorithm == "exact":
            continue
        lists = definition.build_lists(shape, vf, EXAMPLE_ROWS)
        when = "create (HNSW) and build_index" if vf.algorithm == "hnsw" else f"build_index ({EXAMPLE_ROWS:,} rows)"
        yield Statement(f"{part}.{when}", f"the ANN index of {vf.name}", definition.ann_index_sql(shape, vf, lists))
        yield Statement(f"{part}.build_index / drop_ann_index", f"the ANN index of {vf.name}",
                        definition.drop_ann_index_sql(shape, vf))
    settings = definition.build_settings(EXAMPLE_ROWS, spec.vector_fields[0], EXAMPLE_BUILD_MB, EXAMPLE_BUILD_WORKERS)
    yield _settings(f"{part}.build_index", "the build's memory and workers", settings, shape.distributed)
    yield from _maintenance_statements(shape, part)


def _maintenance_statements(shape: TableShape, part: str) -> Iterator[Statement]:
    spec = shape.spec
    added = definition.add_columns_sql(shape, spec.fields[-1:], spec.vector_fields[-1:])
    for statement in added:
        yield Statement(f"{part}.add_columns", "a field, a vector field, the keyword text columns", statement)
    yield Statement(f"{part}.drop_columns", "one column", definition.drop_column_sql(shape, spec.vector_fields[-1].name))
    yield Statement(f"{part}.lock_against_writes", "before a definition change checks the rows",
                    definition.lock_against_writes_sql(shape))
    yield Statement(f"{part}.ann_indexes_ready", "", definition.INDEX_VALIDITY_SQL)
    progress = definition.PROGRESS_ON_WORKERS_SQL if shape.distributed else definition.PROGRESS_LOCAL_SQL
    yield Statement(f"{part}.build_progress", "", progress)
    renamed = shape.renamed(IndexSpec(**{**vars(spec), "name": f"{spec.name}-renamed",
                                         "table_name": f"{spec.table_name}_renamed"}))
    yield Statement(f"{part}.rename_to", "the table", definition.rename_table_sql(shape, renamed))
    yield Statement(f"{part}.rename_to", "its indexes", definition.TABLE_INDEXES_SQL)
    for old, new in zip(shape.derived_names(), renamed.derived_names()):
        yield Statement(f"{part}.rename_to", "an index named after the table", definition.rename_index_sql(old, new))
    if shape.distributed:
        shards = spec.settings["distribution"].get("shards")
        yield Statement("registry.create_index / distribute_index", "shard the table by its key",
                        definition.distribute_sql(shards))
    yield Statement("registry.delete_index", "", definition.drop_table_sql(spec.table_name))


def knn_statements(shape: TableShape, example_filter: Filter, part: str = "VectorQueries") -> Iterator[Statement]:
    spec = shape.spec
    vf = spec.vector_fields[0]
    where, _ = compile_filter(spec, example_filter)
    cases = [("plain", None, QueryOptions()), ("filtered", where, QueryOptions()),
             ("exact", where, QueryOptions(exact=True))]
    for case, condition, options in cases:
        filtered = condition is not None
        if not shape.distributed and not options.exact:
            yield _settings(f"{part}.search", f"{case}, standalone: session settings",
                            knn.query_settings(spec, vf, EXAMPLE_K, filtered, options), False, local=False)
        yield _settings(f"{part}.search", f"{case}, in a snapshot or a transaction of its own",
                        knn.local_settings(spec, vf, EXAMPLE_K, filtered, options), shape.distributed)
        rerank = " (re-ranked candidates)" if vf.params.get("oversample") and not options.exact else ""
        yield Statement(f"{part}.search", f"{case} kNN of {vf.name}{rerank}",
                        knn.knn_sql(shape, vf, condition, exact=options.exact))
    yield Statement(f"{part}.search", "why a search came back short", knn.count_matching_sql(shape, vf, where))
    if not shape.distributed:
        yield Statement(f"{part}.search", "exact for a very selective filter? the table's rows", knn.ROW_ESTIMATE_SQL)
        yield Statement(f"{part}.search", "... and the filter's", knn.filter_estimate_sql(shape, where))
    if shape.distributed:
        yield _settings(f"{part}.explain", "every shard's plan", knn.CITUS_EXPLAIN_SETTINGS, False)
    yield Statement(f"{part}.explain", "", sql.SQL("EXPLAIN ") + knn.knn_sql(shape, vf, where))
    yield from _vector_statements(shape, part)


def _vector_statements(shape: TableShape, part: str) -> Iterator[Statement]:
    vf = shape.spec.vector_fields[0]
    if shape.distributed:
        yield Statement(f"{part}.near_pairs", "row by row on Citus: each row's vector, then search()",
                        knn.vectors_sql(shape, vf))
    else:
        yield _settings(f"{part}.near_pairs", "", knn.local_settings(shape.spec, vf, EXAMPLE_K + 1, False,
                                                                     QueryOptions()), False)
        yield Statement(f"{part}.near_pairs", "each row's nearest neighbours", knn.near_pairs_sql(shape, vf))
    yield Statement(f"{part}.iter_vectors", "an export, through a server-side cursor", knn.vectors_sql(shape, vf))
    yield Statement(f"{part}.sample_vectors", "", knn.SAMPLE_SEED_SQL)
    yield Statement(f"{part}.sample_vectors", "", knn.sample_vectors_sql(shape, vf))


def query_statements(shape: TableShape, example_filter: Filter) -> Iterator[Statement]:
    spec, part = shape.spec, "TableQueries"
    where, _ = compile_filter(spec, example_filter)
    yield Statement(f"{part}.keyword_search", "the general keyword list, filtered", queries.keyword_sql(shape, where))
    for keyword_list in sorted({f.keyword_list for f in spec.fields if f.keyword_list}):
        yield Statement(f"{part}.keyword_search", f"the {keyword_list!r} keyword list",
                        queries.keyword_sql(shape, None, keyword_list))
    sort = BROWSE_ORDER.get(spec.kind) or [(next(f.name for f in spec.fields if f.sortable), False)]
    yield Statement(f"{part}.browse", "one page, filtered", queries.browse_sql(shape, sort, where))
    yield Statement(f"{part}.browse", "how many pass the filter", queries.count_where_sql(shape, where))
    facets = [f for f in spec.fields if f.facetable]
    yield Statement(f"{part}.facet_counts", f"{facets[0].name}, filtered", queries.facet_sql(shape, facets[0].name, where))
    for f in facets:
        if f.type == "datetime":
            yield Statement(f"{part}.facet_counts", f"{f.name} by month, among some keys",
                            queries.facet_sql(shape, f.name, None, interval="month", among_ids=True))
        if f.type.endswith("[]"):
            yield Statement(f"{part}.facet_counts", f"{f.name}: each element", queries.facet_sql(shape, f.name, None))
    yield Statement(f"{part}.fetch", "retrievable fields by key", queries.select_sql(shape, shape.retrievable))
    yield Statement(f"{part}.keys_missing", "the first batch of a re-index",
                    queries.keys_missing_sql(shape, [spec.vector_fields[-1].name], after=False, extra=["path"]
                                             if spec.kind == "photos" else ()))
    yield Statement(f"{part}.keys_missing", "the next batches",
                    queries.keys_missing_sql(shape, [spec.vector_fields[-1].name], after=True))
    if spec.kind == "photos":
        yield from _photo_lookups(shape, part)


def _photo_lookups(shape: TableShape, part: str) -> Iterator[Statement]:
    yield Statement(f"{part}.select", "photos.stored_states", queries.select_sql(shape, STATE_COLUMNS))
    yield Statement(f"{part}.rows_where_in", "photos.same_content: a batch's content hashes",
                    queries.rows_where_in_sql(shape, "content_hash", [c for c in STATE_COLUMNS if c != "content_hash"]))
    yield Statement(f"{part}.rows_where_prefix", "photos.paths_under", queries.rows_where_prefix_sql(shape, "path"))
    yield Statement(f"{part}.rows_where_like", "photos.paths_not_normal: paths an older release may have misspelled",
                    queries.rows_where_like_sql(shape, "path", STATE_COLUMNS))
    yield Statement(f"{part}.distinct_values", "a photo index's folders", queries.distinct_values_sql(shape, "folder"))
    yield Statement(f"{part}.not_captioned", "the first page of photos to caption (service/captioning.py)",
                    queries.not_captioned_sql(shape, after=False, extra=["path", "content_hash"]))
    yield Statement(f"{part}.not_captioned", "the next pages", queries.not_captioned_sql(shape, after=True))
    yield Statement(f"{part}.count_not_captioned", "", queries.count_not_captioned_sql(shape))


def write_statements(shape: TableShape, part: str = "TableWrites") -> Iterator[Statement]:
    spec = shape.spec
    every = list(shape.write_columns)
    some = [spec.key_field, *_partial_columns(spec)]
    yield Statement(f"{part}.write", "the staging table", writes.staging_table_sql(shape))
    yield Statement(f"{part}.write", "whole documents", writes.copy_sql(every))
    yield Statement(f"{part}.write", "whole documents: upsert", writes.upsert_sql(shape, every, whole=True))
    yield Statement(f"{part}.write", f"some columns ({', '.join(some[1:])})", writes.copy_sql(some))
    yield Statement(f"{part}.write", "some columns, inserting missing rows (mergeOrUpload)",
                    writes.upsert_sql(shape, some, whole=False))
    yield Statement(f"{part}.write", "some columns of rows that exist (merge)", writes.merge_update_sql(shape, some))
    rebuilt = [(column, fields) for column, fields in shape.text_columns if any(f.name in some for f in fields)]
    if rebuilt:
        yield Statement(f"{part}.write", "merged rows: their keyword text", writes.rebuild_text_sql(shape, rebuilt))
    yield Statement(f"{part}.update_rows", "some columns of rows by key", writes.update_columns_sql(shape, some[1:3]))
    yield Statement(f"{part}.delete", "", writes.delete_sql(shape))
    replaced = moved_columns(spec.key_field) if spec.kind == "photos" else some
    yield Statement(f"{part}.rekey", "stage the moved rows", writes.stage_rekeyed_sql(shape))
    yield Statement(f"{part}.rekey", "write one back under its new key", writes.rekey_insert_sql(shape, replaced))
    yield Statement(f"{part}.rekey", "", writes.drop_temp_sql(writes.REKEYED))
    if shape.text_columns:
        yield Statement(f"{part}.rebuild_text", "", writes.rebuild_text_sql(shape, shape.text_columns))


def _partial_columns(spec: IndexSpec) -> list[str]:
    """The columns of a typical partial write: a photo's descriptions (and caption vector), else a field."""
    if spec.kind == "photos":
        return [*DESCRIPTION_COLUMNS, *([CAPTION_FIELD] if any(vf.name == CAPTION_FIELD for vf in spec.vector_fields)
                                        else [])]
    return [spec.fields[0].name, spec.vector_fields[0].name]


def stats_statements(shape: TableShape, part: str = "TableStats") -> Iterator[Statement]:
    yield Statement(f"{part}.count", "", stats.count_sql(shape))
    yield Statement(f"{part}.count_vectors", "", stats.count_vectors_sql(shape, shape.spec.vector_fields[0].name))
    yield Statement(f"{part}.count_missing", "", stats.count_missing_sql(shape, [shape.spec.vector_fields[-1].name]))
    yield Statement(f"{part}.stats", "table sizes", stats.table_sizes_sql(shape))
    yield Statement(f"{part}.stats", "each ANN index's size", stats.index_size_sql(shape))
    if shape.distributed:
        yield Statement(f"{part}.stats", "shards and nodes", stats.SHARDS_SQL)
    yield Statement(f"{part}.analyze", "", stats.analyze_sql(shape))


def region_statements(parent: IndexSpec) -> Iterator[Statement]:
    shape = regions.region_shape(parent)
    part = "RegionTable"
    yield Statement(f"{part}.create", "the table (then its indexes, as any index table's)",
                    definition.create_table_sql(shape))
    for statement in regions.primary_key_sql(shape):
        yield Statement(f"{part}.create", "the key: (photo key, region key)", statement)
    yield Statement(f"{part}.create", "", regions.label_index_sql(shape))
    if shape.distributed:
        yield Statement(f"{part}.create", "colocated with the photos", regions.DISTRIBUTE_SQL)
    yield Statement(f"{part}.create", "", regions.foreign_key_sql(shape, parent))
    yield Statement(f"{part}.replace_photos", "", regions.delete_source_sql(shape))
    yield Statement(f"{part}.replace_photos", "write: upsert", writes.upsert_sql(shape, list(shape.write_columns),
                                                                               whole=True))
    yield Statement(f"{part}.stage_photos", "", regions.stage_photos_sql(shape))
    yield Statement(f"{part}.restore_photos", "", regions.restore_photo_sql(shape))
    label_filter = compile_filter(shape.spec, Compare("label", "eq", "example"))[0]
    yield _settings(f"{part}.search", "in a snapshot", knn.local_settings(
        shape.spec, shape.spec.vector_fields[0], EXAMPLE_K, False, QueryOptions()), shape.distributed)
    yield Statement(f"{part}.search", "kNN of regions with a label", knn.knn_sql(shape, shape.spec.vector_fields[0], label_filter))


def _settings(method: str, note: str, settings: dict[str, Any], propagate: bool, *, local: bool = True) -> Statement:
    """The statement session.set_local (or set_session) sends for `settings`."""
    if propagate:
        return Statement(method, note, propagated_set_local_sql(settings))
    return Statement(method, note, set_config_sql(len(settings), local=local), settings)


# -- rendering ----------------------------------------------------------------------------------------------------
def render(title: str, description: str, found: list[Statement]) -> str:
    """The snapshot file: a header, then each statement after a comment naming the method that issues it."""
    lines = [f"-- SQL snapshot: {title}. {description}",
             "-- Generated: PIXSEARCH_UPDATE_SQL=1 pytest tests/test_sql_snapshots.py. Do not edit by hand.",
             "-- Placeholders are bound parameters (%s by position, %(name)s by name); values never reach the SQL.",
             ""]
    for statement in found:
        comment = f"-- {statement.method}" + (f": {statement.note}" if statement.note else "")
        lines.append(comment)
        if statement.settings is not None:
            bound = ", ".join(f"{name} = {value}" for name, value in statement.settings.items())
            lines.append(f"--   bound to: {bound}")
        lines.append(format_sql(statement.sql.as_string(None)) + ";")
        lines.append("")
    return "\n".join(lines)


# Clauses that start a line of their own: (words, unless the word before is one of these).
_CLAUSES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("SELECT",), ()), (("FROM",), ("DELETE",)), (("WHERE",), ()), (("ORDER", "BY"), ()), (("GROUP", "BY"), ()),
    (("LIMIT",), ()), (("ON", "CONFLICT"), ()), (("DO", "UPDATE"), ()), (("RETURNING",), ()),
    (("CROSS", "JOIN"), ()), (("SET",), ("UPDATE", "")),
)
_TOKEN = re.compile(r"%\(\w+\)s|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$\$.*?\$\$|[(),;]|\s+|[^\s(),;'\"$]+|\$", re.S)
MAX_LINE = 118


def format_sql(text: str) -> str:
    """One clause a line (SELECT, FROM, WHERE, ORDER BY, ...), subqueries indented by their depth, long lines
    wrapped after commas. Quoted names, strings and $$ bodies are never split."""
    tokens = [" " if t.isspace() else t for t in _TOKEN.findall(text)]
    words = [t.upper() for t in tokens]
    out: list[str] = []
    depth = 0
    for i, token in enumerate(tokens):
        if token == ")":
            depth -= 1
        if token != " " and out and _starts_clause(words, i):
            while out and out[-1] == " ":
                out.pop()
            out.append("\n" + "  " * depth)
        elif token == " " and out and out[-1].endswith("\n"):
            continue
        out.append(token)
        if token == "(":
            depth += 1
        elif token == ";":
            out.append("\n")
    lines = "".join(out).split("\n")
    return "\n".join(wrapped for line in lines for wrapped in _wrap(line.rstrip()))


def _starts_clause(words: list[str], i: int) -> bool:
    """Whether the words from i on are a clause that starts a line (see _CLAUSES)."""
    following = [w for w in words[i:i + 4] if w != " "]
    previous = next((w for w in reversed(words[:i]) if w != " "), "")
    for phrase, not_after in _CLAUSES:
        if tuple(following[:len(phrase)]) == phrase and previous not in not_after and previous != ";":
            return not (phrase == ("SET",) and following[1:2] == ["LOCAL"])
    return False


def _wrap(line: str) -> Iterator[str]:
    """A line longer than MAX_LINE broken after commas outside quotes, continued one step deeper."""
    if len(line) <= MAX_LINE:
        yield line
        return
    indent = " " * (len(line) - len(line.lstrip()) + 4)
    current = ""
    for piece in _TOKEN.findall(line):
        if current == indent and piece.isspace():
            continue
        current += piece
        if piece == "," and len(current) > MAX_LINE - 24:
            yield current.rstrip()
            current = indent
    if current.strip():
        yield current.rstrip()

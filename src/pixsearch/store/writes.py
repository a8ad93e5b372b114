"""Writes to an index's rows: COPY BINARY into a staging table then one upsert (or merge update), single-row
updates, deletes, and moving rows to new keys."""
from __future__ import annotations

from typing import Any, Sequence

import psycopg
from psycopg import sql

from pixsearch.store.results import checked_vector
from pixsearch.store.schema import SchemaError
from pixsearch.store.shape import INDEXED_AT, TableShape, identifiers

STAGING = sql.Identifier("pixsearch_staging")
REKEYED = sql.Identifier("pixsearch_rekeyed")


# -- statements ---------------------------------------------------------------------------------------------------
def staging_table_sql(shape: TableShape) -> sql.Composed:
    """A temporary table like the index's, dropped at commit: what COPY fills before the upsert."""
    return sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(STAGING, shape.table)


def copy_sql(names: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(STAGING, identifiers(names))


def upsert_sql(shape: TableShape, names: Sequence[str], *, whole: bool) -> sql.Composed:
    """The staged rows inserted, or replacing the row with their key: whole documents (their keyword text made
    from the staged fields) or some columns of them (the others keep their values)."""
    set_names = [sql.Identifier(n) for n in names[1:]] + [sql.Identifier(INDEXED_AT)]
    extra_names, extra_values = [sql.Identifier(INDEXED_AT)], [sql.SQL("now()")]
    for column, fields in shape.text_columns if whole else ():
        extra_names.append(sql.Identifier(column))
        extra_values.append(shape.document_text(STAGING, fields))
        set_names.append(sql.Identifier(column))
    return sql.SQL(
        "INSERT INTO {t} ({cols}, {extra_names}) SELECT {cols}, {extra_values} FROM {s} "
        "ON CONFLICT ({conflict}) DO UPDATE SET {updates} RETURNING {key}"
    ).format(
        t=shape.table, cols=identifiers(names), extra_names=sql.SQL(", ").join(extra_names),
        extra_values=sql.SQL(", ").join(extra_values), s=STAGING, key=shape.key, conflict=shape.conflict_target,
        updates=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(i) for i in set_names),
    )


def merge_update_sql(shape: TableShape, names: Sequence[str]) -> sql.Composed:
    """Some columns of rows that exist set from the staged rows (Azure's merge); rows not there are left out."""
    assignments = [sql.SQL("{0} = s.{0}").format(sql.Identifier(n)) for n in names[1:]]
    assignments.append(sql.SQL("indexed_at = now()"))
    return sql.SQL("UPDATE {t} AS t SET {sets} FROM {s} AS s WHERE t.{key} = s.{key} RETURNING t.{key}").format(
        t=shape.table, sets=sql.SQL(", ").join(assignments), s=STAGING, key=shape.key)


def rebuild_text_sql(shape: TableShape, columns: Sequence[tuple[str, Sequence[Any]]]) -> sql.Composed:
    """The keyword text `columns` of the rows whose key is in %s recomputed from their fields."""
    return sql.SQL("UPDATE {} SET {} WHERE {} = ANY(%s)").format(
        shape.table, shape.text_assignments(columns), shape.key)


def update_columns_sql(shape: TableShape, names: Sequence[str]) -> sql.Composed:
    """`names` of one row (parameters: one per name, and _key)."""
    assignments = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(n), sql.Placeholder(n)) for n in names)
    return sql.SQL("UPDATE {} SET {} WHERE {} = %(_key)s").format(shape.table, assignments, shape.key)


def delete_sql(shape: TableShape) -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(shape.table, shape.key)


def stage_rekeyed_sql(shape: TableShape) -> sql.Composed:
    """A copy of the rows whose key is in %s, dropped at commit, before they are deleted and written back."""
    return sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT * FROM {} WHERE {} = ANY(%s)").format(
        REKEYED, shape.table, shape.key)


def rekey_insert_sql(shape: TableShape, replaced: Sequence[str]) -> sql.Composed:
    """One staged row (key %(old)s) written back with the `replaced` columns set to %(new_0)s, %(new_1)s, ..."""
    kept = [name for name in shape.all_columns if name not in replaced]
    values = sql.SQL(", ").join([*(sql.Placeholder(f"new_{i}") for i in range(len(replaced))),
                                 *map(sql.Identifier, kept)])
    return sql.SQL("INSERT INTO {t} ({target}) SELECT {values} FROM {s} WHERE {key} = %(old)s").format(
        t=shape.table, target=identifiers([*replaced, *kept]), values=values, s=REKEYED, key=shape.key)


def drop_temp_sql(name: sql.Identifier) -> sql.Composed:
    return sql.SQL("DROP TABLE {}").format(name)


# -- execution ----------------------------------------------------------------------------------------------------
class TableWrites:
    def __init__(self, shape: TableShape):
        self.shape = shape

    def write(self, conn: psycopg.Connection, rows: Sequence[dict[str, Any]], *, columns: Sequence[str] | None = None,
              insert_missing: bool = True) -> set[str]:
        """Write rows (dicts keyed by column) atomically; returns the keys written.

        columns=None replaces whole documents (columns a row lacks become NULL: Azure's upload). With `columns`, only
        those are set and every other column keeps its value (Azure's merge); then insert_missing=False touches only
        documents that exist (merge), True inserts the others (mergeOrUpload).

        COPY BINARY into a staging table, then one INSERT .. ON CONFLICT (or UPDATE .. FROM), in a transaction (a
        savepoint inside the caller's): an interrupted run never leaves part of a batch.
        """
        if not rows:
            return set()
        names = self._names(columns)
        whole = columns is None
        with conn.transaction():
            conn.execute(staging_table_sql(self.shape))
            self._copy(conn, rows, names)
            statement = upsert_sql(self.shape, names, whole=whole) if insert_missing else merge_update_sql(
                self.shape, names)
            written = {row[0] for row in conn.execute(statement)}
            rebuilt = [(column, fields) for column, fields in self.shape.text_columns
                       if any(f.name in names for f in fields)] if not whole and written else []
            if rebuilt:
                # A merge changes some fields: the keyword text made from them is rebuilt from the merged rows.
                conn.execute(rebuild_text_sql(self.shape, rebuilt), (list(written),))
        return written

    def _names(self, columns: Sequence[str] | None) -> list[str]:
        """The key, then the columns written (every one for whole documents), checked against the spec."""
        known = self.shape.write_columns
        key = self.shape.spec.key_field
        names = [key] + [c for c in (columns if columns is not None else list(known)[1:]) if c != key]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SchemaError(f"index {self.shape.spec.name!r} has no field(s) {', '.join(unknown)}")
        return names

    def _copy(self, conn: psycopg.Connection, rows: Sequence[dict[str, Any]], names: Sequence[str]) -> None:
        """COPY BINARY the rows into the staging table, each vector checked (width, finiteness) on the way."""
        known = self.shape.write_columns
        vector_fields = {vf.name: vf for vf in self.shape.spec.vector_fields}
        key = self.shape.spec.key_field
        with conn.cursor() as cur, cur.copy(copy_sql(names)) as copy:
            copy.set_types([known[name] for name in names])
            for row in rows:
                values = []
                for name in names:
                    value = row.get(name)
                    if value is not None and name in vector_fields:
                        value = checked_vector(value, vector_fields[name], row.get(key))
                    values.append(value)
                copy.write_row(values)

    def update_rows(self, conn: psycopg.Connection, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Set `columns` of existing rows, each given as (key, value per column), in the caller's transaction: one
        UPDATE by key per row, sent together (psycopg pipelines executemany: one round trip). By key rather than a
        join to the list of rows, so that on Citus each goes to its own shard."""
        if not rows:
            return
        with conn.cursor() as cur:
            cur.executemany(update_columns_sql(self.shape, list(columns)),
                            [{**dict(zip(columns, values)), "_key": key} for key, *values in rows])

    def delete(self, conn: psycopg.Connection, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return conn.execute(delete_sql(self.shape), (list(ids),)).rowcount

    def rekey(self, conn: psycopg.Connection, moves: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Give rows a new key with some columns replaced, keeping everything else (vectors included), in the
        caller's transaction: each move is (old key, {key field: new key, column: value, ...}), every move replacing
        the same columns. The rows are staged first, so swaps and chains work, then deleted and written back under
        their new keys (a distribution column cannot be updated in place on Citus); a row already at a new key is
        replaced; the keyword text is rebuilt from the new values."""
        if not moves:
            return
        olds = [old for old, _ in moves]
        news = [new[self.shape.spec.key_field] for _, new in moves]
        conn.execute(stage_rekeyed_sql(self.shape), (olds,))
        self.delete(conn, olds + news)
        replaced = list(moves[0][1])
        with conn.cursor() as cur:
            cur.executemany(rekey_insert_sql(self.shape, replaced),
                            [{"old": old, **{f"new_{i}": new[name] for i, name in enumerate(replaced)}}
                             for old, new in moves])
        conn.execute(drop_temp_sql(REKEYED))
        self.rebuild_text(conn, news)

    def rebuild_text(self, conn: psycopg.Connection, keys: Sequence[str]) -> None:
        """Recompute the keyword text columns of these rows from their fields."""
        if not self.shape.text_columns or not keys:
            return
        conn.execute(rebuild_text_sql(self.shape, self.shape.text_columns), (list(keys),))

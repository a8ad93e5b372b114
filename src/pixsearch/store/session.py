"""Connection-level pieces every part uses: the read snapshot, and settings local to a transaction or a session."""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from psycopg import sql

from pixsearch.db import Database


@contextmanager
def read_snapshot(db: Database) -> Iterator[psycopg.Connection]:
    """One connection and one REPEATABLE READ, READ ONLY transaction: every statement of a search (its ranked
    lists, documents, facets, counts) sees the same data, and a search never holds more than one pool connection.
    The isolation level goes with BEGIN itself (no separate round trip) and is reset before the connection
    returns to the pool."""
    with db.connection() as conn:
        conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
        try:
            with conn.transaction():
                yield conn
        finally:
            conn.isolation_level, conn.read_only = None, None


def set_config_sql(count: int, *, local: bool) -> sql.Composed:
    """`SELECT set_config(name, value, local), ...` for `count` settings, names and values as parameters: one
    statement psycopg prepares after a few uses, so it costs one cheap round trip."""
    call = sql.SQL("set_config({}, {}, {})").format(sql.Placeholder(), sql.Placeholder(),
                                                    sql.SQL("true" if local else "false"))
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join(call for _ in range(count)))


def propagated_set_local_sql(settings: dict[str, Any]) -> sql.Composed:
    """SET LOCAL for a statement that runs on Citus workers too (a distributed table): they see SET LOCAL — not
    set_config() — and only after `SET LOCAL citus.propagate_set_commands = 'local'` in the same transaction."""
    statements = [sql.SQL("SET LOCAL citus.propagate_set_commands = 'local'")]
    statements += [sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(str(value)))
                   for name, value in settings.items()]
    return sql.SQL("; ").join(statements)


def set_local(conn: psycopg.Connection, settings: dict[str, Any], *, propagate: bool = False) -> None:
    """Set each setting for the current transaction only, in one round trip; propagate: to the Citus workers too
    (propagated_set_local_sql)."""
    if not settings:
        return
    if propagate:
        conn.execute(propagated_set_local_sql(settings))
    else:
        conn.execute(set_config_sql(len(settings), local=True), [v for n in settings for v in (n, str(settings[n]))])


# The ANN knobs each pooled connection was last given at session level (see set_session).
_SESSION_KNOBS: "weakref.WeakKeyDictionary[psycopg.Connection, dict[str, str]]" = weakref.WeakKeyDictionary()
_SESSION_KNOB_PREFIXES = ("hnsw.", "ivfflat.")


def set_session(conn: psycopg.Connection, settings: dict[str, Any]) -> None:
    """Session-level ANN settings on an idle connection, sent only where they differ from what this connection was
    last given: a standalone kNN query with the usual settings is then its one statement, not BEGIN + settings +
    query + COMMIT. Only pgvector's knobs are set this way. Every kNN statement sets all the ones it depends on, so a
    value left on the connection never decides another query, and nothing else reads them."""
    assert all(name.startswith(_SESSION_KNOB_PREFIXES) for name in settings), settings
    known = _SESSION_KNOBS.setdefault(conn, {})
    changed = {name: str(value) for name, value in settings.items() if known.get(name) != str(value)}
    if not changed:
        return
    conn.execute(set_config_sql(len(changed), local=False), [v for item in changed.items() for v in item])
    known.update(changed)

"""Connection pool with pgvector types registered, and the checks that the server can do what we need."""
from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool

from pixsearch.config import Settings

log = logging.getLogger(__name__)

MIN_PGVECTOR = (0, 8, 0)
# Keyword search: unaccent folds accents, pg_trgm matches partial file names. Both ship in PostgreSQL's contrib.
KEYWORD_EXTENSIONS = ("unaccent", "pg_trgm")


class DatabaseError(RuntimeError):
    """The database cannot be reached or cannot do what pixsearch needs; the message says how to fix it."""


_URI_PASSWORD = re.compile(r"(://[^:/@?#\s]*:)[^@/?#\s]*@")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)", re.IGNORECASE)


def redact(conninfo: str) -> str:
    """A connection string fit for messages and logs: the password gone, whether it was given in a URI's user
    part (postgresql://u:SECRET@h), as a URI parameter (?password=SECRET) or as a keyword (password=SECRET)."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _URI_PASSWORD.sub(r"\1***@", conninfo))


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@dataclass(frozen=True)
class ServerInfo:
    """What the server is: versions that decide what pixsearch can do on it."""

    server_version: str
    pgvector_version: str
    citus_version: str | None  # set on a Citus node (pixsearch talks to the coordinator)


def ensure_extensions(conninfo: str) -> ServerInfo:
    """Create the extensions pixsearch needs where they are missing, check pgvector's version, report the server.

    An extension already there is left alone: on Citus even a no-op CREATE EXTENSION IF NOT EXISTS is forwarded to
    the workers, where it fails for a user who does not own the extension."""
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL at {redact(conninfo)}: {str(exc).strip()}\n"
            "Check PIXSEARCH_DATABASE_URL, or unset it to use the embedded database."
        ) from None
    with conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if row is None:
            available = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
            if available is None:
                raise DatabaseError(
                    "the PostgreSQL server has no pgvector extension installed. Install pgvector >= 0.8 on the server "
                    "(https://github.com/pgvector/pgvector#installation, e.g. the postgresql-NN-pgvector package), "
                    "or unset PIXSEARCH_DATABASE_URL to use the embedded database, which includes it."
                )
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.errors.InsufficientPrivilege:
                raise DatabaseError(
                    "the pgvector extension is installed on the server but not enabled in this database, and this "
                    "user may not enable it. Ask an administrator to run: CREATE EXTENSION vector;"
                ) from None
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        version = row[0]
        if _version_tuple(version) < MIN_PGVECTOR:
            raise DatabaseError(
                f"pgvector {version} is too old: pixsearch needs >= 0.8.0 (iterative index scans). Upgrade the "
                "server package, then run: ALTER EXTENSION vector UPDATE;"
            )
        present = {row[0] for row in conn.execute("SELECT extname FROM pg_extension")}
        for name in KEYWORD_EXTENSIONS:
            if name in present:
                continue
            try:
                conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name)))
            except (psycopg.errors.UndefinedFile, psycopg.errors.FeatureNotSupported):
                raise DatabaseError(
                    f"the PostgreSQL server lacks the {name} extension (keyword search needs pg_trgm and unaccent): "
                    "install the server's contrib package (e.g. postgresql-contrib)"
                ) from None
            except psycopg.errors.InsufficientPrivilege:
                raise DatabaseError(
                    f"this user may not enable the {name} extension. Ask an administrator to run: "
                    f"CREATE EXTENSION {name};"
                ) from None
        citus = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'").fetchone()
        server = conn.execute("SHOW server_version").fetchone()[0]
        return ServerInfo(server_version=server, pgvector_version=version, citus_version=citus[0] if citus else None)


class Database:
    """A pool of connections to one database, each with pgvector's types registered.

    statement_timeout_s bounds every statement run on the pool's connections (the API server sets it, so no request
    can keep the database busy for long). `side_connection` is a separate one-connection pool for short lookups,
    such as API-key checks, that must not queue behind searches when the main pool is busy.
    """

    def __init__(
        self, conninfo: str, *, embedded: bool, max_size: int = 4, statement_timeout_s: float | None = None
    ):
        self.conninfo = conninfo
        self.embedded = embedded
        self.statement_timeout_s = statement_timeout_s
        self.server = ensure_extensions(conninfo)
        self.pgvector_version = self.server.pgvector_version
        self.pool = ConnectionPool(
            conninfo, min_size=1, max_size=max_size, configure=self._configure, open=False, name="pixsearch"
        )
        self.pool.open(wait=True, timeout=15)
        self._side_pool: ConnectionPool | None = None
        self._side_lock = threading.Lock()

    def _configure(self, conn: psycopg.Connection) -> None:
        register_vector(conn)
        if self.statement_timeout_s:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(self.statement_timeout_s * 1000)}ms",))
            conn.commit()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self.pool.connection() as conn:
            yield conn

    @contextmanager
    def side_connection(self) -> Iterator[psycopg.Connection]:
        if self._side_pool is None:
            with self._side_lock:
                if self._side_pool is None:
                    side = ConnectionPool(self.conninfo, min_size=0, max_size=1, configure=self._configure,
                                          open=False, name="pixsearch-side")
                    side.open(wait=False)
                    self._side_pool = side
        with self._side_pool.connection(timeout=10) as conn:
            yield conn

    def close(self) -> None:
        self.pool.close()
        if self._side_pool is not None:
            self._side_pool.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_database(settings: Settings, *, statement_timeout_s: float | None = None) -> Database:
    if settings.database_url:
        return Database(settings.database_url, embedded=False, statement_timeout_s=statement_timeout_s)
    from pixsearch.db.embedded import start_embedded

    return Database(start_embedded(settings.pgdata), embedded=True, statement_timeout_s=statement_timeout_s)

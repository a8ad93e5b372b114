"""Connection pool with pgvector types registered, and the checks that the server can do what we need."""
from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from pixsearch.config import Settings
from pixsearch.db.embedded import restart_if_stopped, start_embedded
from pixsearch.db.errors import DatabaseError, DatabaseFull, DatabaseUnavailable, QueryTimeout, StatementAborted

log = logging.getLogger(__name__)
# Database reports an outage once (down, back); psycopg and its pool would add a warning per connection dropped,
# per failed reconnection and per rollback on a cut connection. Left alone when the application configured them.
if logging.getLogger("psycopg").level == logging.NOTSET:
    logging.getLogger("psycopg").setLevel(logging.ERROR)

MIN_PGVECTOR = (0, 8, 0)
# Keyword search: unaccent folds accents, pg_trgm matches partial file names. Both ship in PostgreSQL's contrib.
KEYWORD_EXTENSIONS = ("unaccent", "pg_trgm")


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


# How long opening the pool may take for its first connection (the server answered a moment before).
OPEN_WAIT_S = 15.0
# How long a request may wait for a free pooled connection while the database is up (all of them busy: load).
POOL_WAIT_S = 30.0
SIDE_POOL_WAIT_S = 10.0
# libpq's connect_timeout for pool connections and reachability probes: a host that does not answer (a firewall
# dropping packets) fails within this instead of hanging a request; a stopped local server fails at once.
CONNECT_TIMEOUT_S = 3
# While the database is down every request is refused at once; this often a watcher checks whether it is back
# (and restarts the embedded server if it died), so requests succeed within this long of its return.
PROBE_INTERVAL_S = 0.5


@dataclass
class _Outage:
    since: float
    reason: str
    refused: int = 0


@dataclass(frozen=True)
class PoolStatus:
    """What monitoring reads of a Database, without touching the server: the main pool's connections (from
    psycopg_pool's own measures) and whether the database is in an outage.

    in_use: connections handed out to requests; waiting: requests queued for one; size: connections open (in use or
    idle, up to max_size). During an outage the pool is closed: in_use, waiting and size are 0 and `up` is False."""

    up: bool
    in_use: int
    waiting: int
    size: int
    max_size: int
    outages: int  # outages since this Database was opened (each one logged once)
    refused: int  # requests refused during the current outage (0 when up)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Database:
    """Pools of connections to one database, each with pgvector's types registered, that fail fast while the
    database is down.

    statement_timeout_s bounds every statement run on the pool's connections (the API server sets it, so no request
    can keep the database busy for long). `side_connection` is a separate one-connection pool for short lookups,
    such as API-key checks, that must not queue behind searches when the main pool is busy.

    When a connection is lost and the server does not answer a new one, the pools are closed (which also releases
    requests waiting for a connection) and every request is refused at once with DatabaseUnavailable, logged once
    per outage. A watcher thread checks every PROBE_INTERVAL_S whether the server is back — first calling `revive`,
    which restarts the embedded server if it died — and then opens fresh pools, so no stale connection is handed
    out after the outage.
    """

    def __init__(
        self, conninfo: str, *, embedded: bool, max_size: int = 4, statement_timeout_s: float | None = None,
        revive: Callable[[], str | None] | None = None, data_directory: Path | None = None,
    ):
        self.conninfo = conninfo
        self.embedded = embedded
        self.max_size = max_size
        self.statement_timeout_s = statement_timeout_s
        self.data_directory = data_directory
        self._revive = revive
        self.server = ensure_extensions(conninfo)
        self.pgvector_version = self.server.pgvector_version
        self._state_lock = threading.Lock()
        self._outage: _Outage | None = None
        self._outages = 0
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._main: ConnectionPool | None = self._new_pool("pixsearch", min_size=1, max_size=max_size)
        try:
            self._main.open(wait=True, timeout=OPEN_WAIT_S)
        except PoolTimeout as exc:
            self._main.close()
            raise DatabaseUnavailable(f"no connection to {redact(conninfo)} within {OPEN_WAIT_S:.0f} s; try again "
                                      "shortly") from exc
        self._side: ConnectionPool | None = None

    def _new_pool(self, name: str, *, min_size: int, max_size: int) -> ConnectionPool:
        return ConnectionPool(self.conninfo, min_size=min_size, max_size=max_size, configure=self._configure,
                              kwargs={"connect_timeout": CONNECT_TIMEOUT_S}, open=False, name=name)

    def _configure(self, conn: psycopg.Connection) -> None:
        register_vector(conn)
        if self.statement_timeout_s:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(self.statement_timeout_s * 1000)}ms",))
            conn.commit()

    @property
    def pool(self) -> ConnectionPool | None:
        """The main pool (None while the database is down)."""
        return self._main

    def status(self) -> PoolStatus:
        """The main pool's connections and the outage state, read from memory (a scrape during an outage or under
        load never waits for the database)."""
        outage, pool = self._outage, self._main
        if outage is not None or pool is None:
            return PoolStatus(up=False, in_use=0, waiting=0, size=0, max_size=self.max_size, outages=self._outages,
                              refused=outage.refused if outage is not None else 0)
        stats = pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return PoolStatus(up=True, in_use=max(0, size - idle), waiting=stats.get("requests_waiting", 0), size=size,
                          max_size=self.max_size, outages=self._outages, refused=0)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self._connection(lambda: self._main, POOL_WAIT_S) as conn:
            yield conn

    @contextmanager
    def side_connection(self) -> Iterator[psycopg.Connection]:
        with self._connection(self._side_pool, SIDE_POOL_WAIT_S) as conn:
            yield conn

    def _side_pool(self) -> ConnectionPool | None:
        if self._side is None:
            with self._state_lock:
                if self._side is None and self._outage is None and not self._closing.is_set():
                    side = self._new_pool("pixsearch-side", min_size=0, max_size=1)
                    side.open(wait=False)
                    self._side = side
        return self._side

    @contextmanager
    def _connection(self, pick: Callable[[], ConnectionPool | None], wait_s: float) -> Iterator[psycopg.Connection]:
        pool = self._pool_or_refuse(pick)
        try:
            conn = pool.getconn(timeout=wait_s)
        except PoolClosed as exc:  # closed by an outage while this request waited, or by close()
            if self._closing.is_set():
                raise DatabaseUnavailable("the database connection is closed") from exc
            raise self._refusal() from exc
        except PoolTimeout as exc:
            if not self._reachable():
                self._went_down(exc)
                raise self._refusal() from exc
            raise DatabaseUnavailable(
                f"all {pool.max_size} database connections stayed busy for {wait_s:.0f} s; try again shortly"
            ) from exc
        try:
            with conn:
                yield conn
        except psycopg.errors.DiskFull as exc:
            raise DatabaseFull(self._full_message(exc)) from exc
        except psycopg.errors.QueryCanceled as exc:  # statement_timeout, or a cancel: the server is fine
            if conn.broken:
                self._lost_connection(exc)
                raise self._refusal(_first_line(exc)) from exc
            raise QueryTimeout(f"the statement was cancelled: {_first_line(exc)}") from exc
        except psycopg.OperationalError as exc:
            if not conn.broken:  # a working server aborted the statement (deadlock, lock conflict, shutdown...)
                raise StatementAborted(f"the database aborted the statement: {_first_line(exc)}") from exc
            self._lost_connection(exc)
            raise self._refusal(_first_line(exc)) from exc
        finally:
            pool.putconn(conn)

    def _pool_or_refuse(self, pick: Callable[[], ConnectionPool | None]) -> ConnectionPool:
        pool = pick() if self._outage is None else None
        if pool is None:
            if self._outage is None and self._closing.is_set():
                raise DatabaseUnavailable("the database connection is closed")
            raise self._refusal()
        return pool

    def _refusal(self, reason: str | None = None) -> DatabaseUnavailable:
        outage = self._outage
        if outage is not None:
            outage.refused += 1  # a statistic for the recovery log line; a lost increment does not matter
            reason = outage.reason
        return DatabaseUnavailable(f"the database is not reachable right now ({reason or 'connection lost'}); "
                                   "try again shortly")

    def _full_message(self, exc: psycopg.Error) -> str:
        where = (f"the embedded database's data directory {self.data_directory}" if self.data_directory is not None
                 else "the database server's data directory")
        return f"no space left in {where}: nothing of this write was kept; free some space and run it again " \
               f"({_first_line(exc)})"

    def _reachable(self) -> bool:
        try:
            psycopg.connect(self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S).close()
        except psycopg.Error:
            return False
        return True

    def _lost_connection(self, exc: BaseException) -> None:
        """A connection broke: the whole server is down, or it dropped this connection alone (or restarted while
        the others sat idle in the pool: they are stale too, so the pools are checked)."""
        with self._state_lock:
            if self._outage is not None or self._closing.is_set():
                return
            reachable = self._reachable()
        if not reachable:
            self._went_down(exc)
            return
        for pool in (self._main, self._side):
            if pool is not None:
                with suppress(psycopg.Error):
                    pool.check()

    def _went_down(self, exc: BaseException) -> None:
        with self._state_lock:
            if self._outage is not None or self._closing.is_set():
                return
            self._outage = _Outage(time.monotonic(), redact(_first_line(exc)))
            self._outages += 1
            closing = [pool for pool in (self._main, self._side) if pool is not None]
            self._main = self._side = None
            log.warning("database unavailable (%s): answering requests with 503 until it is back, checking every "
                        "%.1f s", self._outage.reason, PROBE_INTERVAL_S)
            self._watcher = threading.Thread(target=self._watch, args=(closing,), name="pixsearch-db-watch",
                                             daemon=True)
            self._watcher.start()

    def _watch(self, closing: list[ConnectionPool]) -> None:
        """Close the pools of the lost server (releasing requests waiting on them), then wait for the server."""
        for pool in closing:
            pool.close(timeout=CONNECT_TIMEOUT_S)
        told: set[str] = set()
        while not self._closing.wait(PROBE_INTERVAL_S):
            if self._revive is not None:
                try:
                    note = self._revive()
                except Exception as exc:  # noqa: BLE001 - a failed restart is reported and tried again
                    note = f"could not restart the embedded PostgreSQL: {type(exc).__name__}: {_first_line(exc)}"
                if note and note not in told:
                    told.add(note)
                    log.warning("%s", note)
            if not self._reachable():
                continue
            main = self._new_pool("pixsearch", min_size=1, max_size=self.max_size)
            main.open(wait=False)
            with self._state_lock:
                outage, self._outage = self._outage, None
                if self._closing.is_set():
                    main.close()
                    return
                self._main = main
            if outage is not None:
                log.warning("database reachable again after %.1f s (%d requests refused meanwhile)",
                            time.monotonic() - outage.since, outage.refused)
            return

    def close(self) -> None:
        self._closing.set()
        with self._state_lock:
            pools = [pool for pool in (self._main, self._side) if pool is not None]
            self._main = self._side = None
            watcher = self._watcher
        for pool in pools:
            pool.close()
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(CONNECT_TIMEOUT_S + 5)

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_database(settings: Settings, *, statement_timeout_s: float | None = None) -> Database:
    if settings.database_url:
        return Database(settings.database_url, embedded=False, max_size=settings.pool_size,
                        statement_timeout_s=statement_timeout_s)
    return Database(start_embedded(settings.pgdata), embedded=True, max_size=settings.pool_size,
                    statement_timeout_s=statement_timeout_s, revive=lambda: restart_if_stopped(settings.pgdata),
                    data_directory=settings.pgdata)

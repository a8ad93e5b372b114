"""Indexing costs a few transactions per batch, not one per photo: counted by the server itself (pg_stat_database)
on the embedded PostgreSQL 18 server, for 160 new photos and for the same 160 photos renamed."""
from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import psycopg
import pytest

from helpers import noise_images
from pixsearch.config import Settings
from pixsearch.service import Engine

PHOTOS = 160
COUNTER_DATABASE = "pixsearch_transaction_counter"
MAX_TRANSACTIONS = 40  # issue 20: 160 new photos cost 199 when each new file looked up its content hash alone


class TransactionCounter:
    """The committed + rolled back transactions of the index's database (pg_stat_database), read from a connection
    to another database of the server (COUNTER_DATABASE), so that reading them adds none.

    Backends publish their counts to the shared statistics lazily (at most once a second; at the latest when they
    exit), so the count is read once the backends that did the work have exited (or published on request, through
    pg_stat_force_next_flush); pg_stat_clear_snapshot makes each read see the shared counters as they are then."""

    def __init__(self, conninfo: str):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            self.database, pid = conn.execute("SELECT current_database(), pg_backend_pid()").fetchone()
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (COUNTER_DATABASE,)).fetchone():
                conn.execute(f"CREATE DATABASE {COUNTER_DATABASE}")
        self.conn = psycopg.connect(conninfo, dbname=COUNTER_DATABASE, autocommit=True)
        self.wait_until_only(self.backends() - {pid})
        self.started = 0

    def _total(self) -> int:
        return self.conn.execute(
            "SELECT pg_stat_clear_snapshot(), xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (self.database,)).fetchone()[1]

    def backends(self) -> set[int]:
        """The client backends connected to the index's database now."""
        return {pid for (pid,) in self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
            (self.database,))}

    def wait_until_only(self, allowed: set[int]) -> None:
        """Wait until every client backend of the database is in `allowed`: the others have exited (and published
        their counts)."""
        deadline = time.monotonic() + 30
        while not self.backends() <= allowed:
            assert time.monotonic() < deadline, "connections did not close"
            time.sleep(0.05)

    def start(self) -> None:
        self.started = self._total()

    def counted(self) -> int:
        return self._total() - self.started

    def close(self) -> None:
        self.conn.close()


@contextmanager
def counting(home, embedder, conninfo: str) -> Iterator[tuple[Engine, list[int]]]:
    """An engine (default settings: batch_size 16) whose transactions from here to the end of the block are
    counted, opening the engine left out; the count is appended to the yielded list once the engine is closed and
    its connections are gone. Autovacuum is paused meanwhile: its workers' transactions count in the same totals."""
    result: list[int] = []
    counter = TransactionCounter(conninfo)
    try:
        with _autovacuum_paused(counter.conn):
            others = counter.backends()  # connections of other engines: idle, not ours
            with Engine(Settings.load(home=home), embedder=embedder) as engine:
                with engine.db.connection() as conn:  # publishes what opening the engine counted
                    pool = {conn.execute("SELECT pg_backend_pid(), pg_stat_force_next_flush()").fetchone()[0]}
                counter.wait_until_only(others | pool)  # e.g. the connection that checked the server's extensions
                counter.start()
                yield engine, result
            counter.wait_until_only(others)
            result.append(counter.counted())
    finally:
        counter.close()


@contextmanager
def _autovacuum_paused(conn: psycopg.Connection) -> Iterator[None]:
    conn.execute("ALTER SYSTEM SET autovacuum = off")
    conn.execute("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 60
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                           ).fetchone()[0]:
            assert time.monotonic() < deadline, "autovacuum workers did not finish"
            time.sleep(0.1)
        yield
    finally:
        conn.execute("ALTER SYSTEM RESET autovacuum")
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def photo_index(home, embedder) -> Iterator[tuple[str, str]]:
    """A new photo index, and the database's connection string."""
    name = "tx-" + uuid.uuid4().hex[:8]
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        engine.index(name, create=True)
        conninfo = engine.db.conninfo
    yield name, conninfo
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        engine.delete_index(name)


def test_indexing_160_new_photos_costs_at_most_40_transactions(home, embedder, photo_index, tmp_path):
    name, conninfo = photo_index
    noise_images(tmp_path / "new", PHOTOS, 48, 64, seed=20)
    assert Settings.load(home=home).batch_size == 16
    with counting(home, embedder, conninfo) as (engine, transactions):
        report = engine.index(name).add_paths([tmp_path])
    assert (report.added, report.failed) == (PHOTOS, [])
    print(f"160 new photos: {transactions[0]} transactions")
    assert transactions[0] <= MAX_TRANSACTIONS


def test_a_run_that_finds_160_photos_renamed_costs_at_most_40_transactions(home, embedder, photo_index, tmp_path):
    name, conninfo = photo_index
    paths = noise_images(tmp_path / "before", PHOTOS, 48, 64, seed=21)
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        assert engine.index(name).add_paths([tmp_path]).added == PHOTOS
    (tmp_path / "after").mkdir()
    for path in paths:
        path.rename(tmp_path / "after" / f"renamed-{path.name}")
    with counting(home, embedder, conninfo) as (engine, transactions):
        report = engine.index(name).add_paths([tmp_path])
    assert (report.moved, report.added, report.removed, report.failed) == (PHOTOS, 0, 0, [])
    print(f"160 photos renamed: {transactions[0]} transactions")
    assert transactions[0] <= MAX_TRANSACTIONS

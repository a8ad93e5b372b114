"""Upgrades between releases: a database made by the previous release (tests/fixtures, made by that release's code
with scripts/make_previous_release_fixture.py) opens, migrates and works with today's code; migrations run once, in
one transaction; a newer schema and a data directory of another PostgreSQL major are one clear error each."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from conftest import run_cli
from helpers import copy_some
from pixsearch.config import Settings
from pixsearch.db import Database, DatabaseError
from pixsearch.db import dump as pg
from pixsearch.service import Engine, Query
from pixsearch.store import migrate, registry
from pixsearch.store.dump import latest_schema_version, schema_version

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fresh_database(engine):
    """A new, empty database on the session's embedded server; its connection string."""
    name = "upgrade_" + uuid.uuid4().hex[:8]
    with psycopg.connect(engine.db.conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield make_conninfo(engine.db.conninfo, dbname=name)
    with psycopg.connect(engine.db.conninfo, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_a_database_of_the_previous_release_migrates_and_searches_and_ingests(fresh_database, home, embedder, samples,
                                                                             tmp_path):
    previous = json.loads((FIXTURES / "previous-release.json").read_text())
    with Database(fresh_database, embedded=False) as db:  # the extensions, as a fresh server gets them
        pg.restore(fresh_database, FIXTURES / "previous-release.dump", leave_out=lambda entry: False,
                   scratch=tmp_path)
        assert schema_version(db) == previous["made_by"]["schema_version"]

    with Engine(Settings.load(home=home, database_url=fresh_database), embedder=embedder) as engine:
        assert schema_version(engine.db) == latest_schema_version()  # migrated at start
        photos = engine.index("photos")
        expected = previous["expected"]
        for text, ids in expected["text"].items():
            assert [h.id for h in photos.search(text, k=3)] == ids, text
        assert [h.id for h in photos.search(Query(text="Lucia harbour"), k=1, mode="keyword")] == expected["caption"]
        vectors = engine.index("vectors")
        query = np.asarray(previous["query_vector"], dtype=np.float32)
        assert [h.id for h in vectors.search_vector(query, k=5)] == expected["vectors"]
        assert engine.api_key_role(previous["query_key"]) == "query"

        new = tmp_path / "new"
        copy_some(samples, new, ["flower.jpg", "coins.png"])
        report = photos.add_paths([new])
        assert report.added == 2 and not report.failed, report.failed
        assert photos.search("a flower", k=1)[0].path == str(new / "flower.jpg")
        assert photos.count() == len(previous["photos"]) + 2
        vectors.add_vectors(["new"], query.reshape(1, 8), [{"label": "new"}])
        assert vectors.search_vector(query, k=1)[0].id == "new"


def test_migrations_run_once_in_one_transaction_and_a_newer_schema_is_refused(fresh_database, home, embedder,
                                                                             monkeypatch):
    with Engine(Settings.load(home=home, database_url=fresh_database), embedder=embedder) as engine:
        engine.list_indexes()
        with engine.db.connection() as conn:
            applied = conn.execute("SELECT version, applied_at FROM pixsearch_migrations ORDER BY version").fetchall()
        assert [v for v, _ in applied] == [v for v, _ in registry.MIGRATIONS]
        migrate(engine.db)  # a second start: nothing runs again
        with engine.db.connection() as conn:
            assert conn.execute("SELECT version, applied_at FROM pixsearch_migrations ORDER BY version"
                                ).fetchall() == applied

        latest = latest_schema_version()
        monkeypatch.setattr(registry, "MIGRATIONS", registry.MIGRATIONS + [
            (latest + 1, "CREATE TABLE pixsearch_probe (x int)"),
            (latest + 2, "SELECT 1 / 0"),
        ])
        with pytest.raises(psycopg.errors.DivisionByZero):
            migrate(engine.db)
        with engine.db.connection() as conn:  # the failed upgrade left nothing: not the table, not its version
            assert conn.execute("SELECT to_regclass('pixsearch_probe')").fetchone()[0] is None
            assert conn.execute("SELECT max(version) FROM pixsearch_migrations").fetchone()[0] == latest

        monkeypatch.setattr(registry, "MIGRATIONS", registry.MIGRATIONS[:-1])  # a newer release's, that works
        migrate(engine.db)
        assert schema_version(engine.db) == latest + 1
        monkeypatch.undo()

    with pytest.raises(DatabaseError, match=f"newer pixsearch release \\(schema version {latest + 1}; this release "
                                            f"knows up to {latest}\\)"):
        with Engine(Settings.load(home=home, database_url=fresh_database), embedder=embedder) as engine:
            engine.list_indexes()
    refused = run_cli("indexes", "list", home=home, env={"PIXSEARCH_DATABASE_URL": fresh_database})
    assert refused.returncode == 1 and "newer pixsearch release" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_data_directory_of_another_postgres_major_is_one_clear_error(tmp_path):
    home = tmp_path / "home"
    pgdata = home / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("17\n")
    (pgdata / "base").mkdir()
    before = sorted(p.name for p in pgdata.iterdir())

    result = run_cli("indexes", "list", home=home)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = " ".join(result.stderr.split())
    assert f"the embedded database in {pgdata} was made by PostgreSQL 17" in error
    assert "this pixsearch runs PostgreSQL 18" in error
    assert "run `pixsearch backup pixsearch.backup`" in error and "`pixsearch restore pixsearch.backup`" in error
    assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 1
    assert sorted(p.name for p in pgdata.iterdir()) == before and (pgdata / "PG_VERSION").read_text() == "17\n"

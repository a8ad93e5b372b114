"""Faults as a deployment meets them: the database stopped or killed under a running server, SIGTERM and SIGKILL in
the middle of work, full and read-only folders, files changing and folders locking during ingest.

Everything is real: `pixsearch serve` and `pixsearch index` run as subprocesses in PIXSEARCH_HOMEs of their own
(the session's model exports hard-linked in), signals are sent to them, and the PostgreSQL servers that are stopped
or killed are their own — the embedded server of such a home, or a server these tests make from the embedded
binaries — never the session's shared one. Full and read-only folders are small tmpfs mounts (root only; skipped
otherwise, except read-only folders, which a non-root user gets with chmod).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil
import psycopg
import pytest
from PIL import Image

from citus_cluster import _grant_search, embedded_pg_config, node_os_user
from conftest import run_cli
from pixsearch.config import Settings
from pixsearch.db import DatabaseFull
from pixsearch.ingest import NoProgress
from pixsearch.ingest.scan import photo_id
from pixsearch.samples import sample_files
from pixsearch.service import Engine

PIXSEARCH = Path(sys.executable).with_name("pixsearch")
PG_BIN = embedded_pg_config().parent
ROOT = os.geteuid() == 0
# How long the outage tests wait for the API to answer again: only a deadline for what is not coming (how fast
# refusals and recovery are is measured by bench/soak.py, not asserted here).
RECOVERY_DEADLINE_S = 120.0


# -- homes, servers and the embedded PostgreSQL ------------------------------------------------------------------------
def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def new_home(model_cache: Path) -> Path:
    """A PIXSEARCH_HOME of its own (outside pytest's tmp tree: see conftest's `home`), with the models' exports."""
    path = Path(tempfile.mkdtemp(prefix="pixsearch-reliability-"))
    path.chmod(0o755)  # the embedded server's system user (when root) must reach its data directory
    shutil.copytree(model_cache, path / "cache", copy_function=_link_or_copy, ignore=shutil.ignore_patterns("thumbnails"))
    return path


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """The live PostgreSQL processes of a data directory: the postmaster and every backend work in it."""
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "postgres":
            continue
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and os.path.realpath(process.cwd()) == str(pgdata.resolve()):
                found.append(process)
    return found


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def pg_ctl_status(pgdata: Path) -> int:
    """pg_ctl status: 0 running, 3 not running (run as the data directory's owner: pg_ctl refuses root)."""
    owner = pgdata.stat().st_uid
    user = {"user": owner, "group": pgdata.stat().st_gid, "extra_groups": []} if ROOT and owner != 0 else {}
    return subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(pgdata), "status"], capture_output=True, cwd="/",
                          **user).returncode


def assert_embedded_stopped(pgdata: Path) -> None:
    """The data directory's server is stopped: no process of it left, no postmaster.pid, pg_ctl agrees."""
    deadline = time.monotonic() + 15
    while (postgres_processes(pgdata) or (pgdata / "postmaster.pid").exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not postgres_processes(pgdata), [p.cmdline() for p in postgres_processes(pgdata)]
    assert not (pgdata / "postmaster.pid").exists()
    assert pg_ctl_status(pgdata) == 3


def remove_home(home: Path) -> None:
    pgdata = home / "pgdata"
    if pgdata.exists() and postgres_processes(pgdata):  # a failed test's leftover: stop it, then say so
        subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(pgdata), "stop", "-m", "immediate"], cwd="/",
                       capture_output=True, **({"user": pgdata.stat().st_uid} if ROOT else {}))
    shutil.rmtree(home, ignore_errors=True)


class Served:
    """`pixsearch serve --port 0 --session-key` in its own process; its stderr kept in a file."""

    LINK = re.compile(r"search page: (http://127\.0\.0\.1:\d+)/#key=(\S+)")

    def __init__(self, home: Path, env: dict[str, str] | None = None):
        self.home = home
        self.log = home / f"serve-{uuid.uuid4().hex[:6]}.stderr"
        with open(self.log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [str(PIXSEARCH), "serve", "--port", "0", "--session-key"],
                env=dict(os.environ, PIXSEARCH_HOME=str(home), **(env or {})), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while not (match := self.LINK.search(self.stderr())):
            assert self.proc.poll() is None and time.monotonic() < deadline, f"serve did not start:\n{self.stderr()}"
            time.sleep(0.05)
        self.base, self.key = match.groups()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"api-key": key or self.key}, timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def model_cache(home, embedder) -> Path:
    """The session's model cache, with both towers exported (they are exported on first use)."""
    embedder.embed_images([embedder.prepare_image(Image.new("RGB", (64, 48), (200, 30, 30)))])
    embedder.embed_texts(["a red square"])
    return home / "cache"


@pytest.fixture
def servers():
    """Servers a test starts; whatever is still running at its end is killed."""
    started: list[Served] = []
    yield started
    for server in started:
        server.kill()


def make_photos(folder: Path, count: int, size: int = 320, start: int = 0) -> list[Path]:
    """`count` distinct JPEGs made from the sample photos (rotated and tinted), long side `size`."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(sample_files().values())
    written = []
    for i in range(start, start + count):
        image = Image.open(sources[i % len(sources)]).convert("RGB")
        image.thumbnail((size, size))
        image = image.rotate(1 + i // len(sources) * 3, resample=Image.Resampling.BILINEAR)
        image.paste((i * 37 % 256, 0, 0), (0, 0, 4, 4))
        path = folder / f"photo-{i:04d}.jpg"
        image.save(path, "JPEG", quality=88)
        written.append(path)
    return written


def search(client: httpx.Client, index: str, **body) -> httpx.Response:
    return client.post(f"/indexes/{index}/docs/search", json={"top": 5, **body})


@pytest.fixture(scope="module")
def served_home(model_cache):
    """A home with index `rel` of a few photos, made by `pixsearch index` (whose exit stopped the server)."""
    home = new_home(model_cache)
    make_photos(home / "photos", 6)
    done = run_cli("index", str(home / "photos"), "--index", "rel", home=home)
    assert done.returncode == 0, done.stderr
    assert_embedded_stopped(home / "pgdata")
    yield home
    remove_home(home)


# -- SIGTERM does what Ctrl+C does ---------------------------------------------------------------------------------------
def test_sigterm_stops_serve_and_its_embedded_postgres(served_home, servers):
    server = Served(served_home)
    servers.append(server)
    with server.client() as client:
        assert search(client, "rel", search="a cat").status_code == 200
    assert postgres_processes(served_home / "pgdata")
    assert server.stop(signal.SIGTERM) == -signal.SIGTERM  # shut down, then ended by the signal it was sent
    assert_embedded_stopped(served_home / "pgdata")
    assert "Traceback" not in server.stderr()


def test_sigterm_stops_index_midway_and_its_embedded_postgres(served_home, tmp_path):
    make_photos(tmp_path / "many", 48, size=256)
    env = dict(os.environ, PIXSEARCH_HOME=str(served_home), PIXSEARCH_BATCH_SIZE="8")
    with open(tmp_path / "index.stderr", "wb") as stderr:
        proc = subprocess.Popen([str(PIXSEARCH), "index", str(tmp_path / "many"), "--index", "rel-sigterm"],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while not _rows_in(served_home / "pgdata", "rel-sigterm"):  # signalled once the first batch is written
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "index.stderr").read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_embedded_stopped(served_home / "pgdata")
    assert "Traceback" not in (tmp_path / "index.stderr").read_text()


def _embedded_url(pgdata: Path) -> str:
    """How to reach a running embedded server directly (its socket folder and port are in postmaster.pid)."""
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/postgres?host={lines[4]}&port={lines[3]}"


def _table_of(conn: psycopg.Connection, index: str) -> str | None:
    row = conn.execute("SELECT table_name FROM pixsearch_indexes WHERE name = %s", (index,)).fetchone()
    return row[0] if row else None


def _rows_in(pgdata: Path, index: str) -> int:
    """Rows of an index, read straight from a running embedded server (0 while it or the table is not there)."""
    try:
        with psycopg.connect(_embedded_url(pgdata), connect_timeout=2) as conn:
            table = _table_of(conn, index)
            if table is None:
                return 0
            return conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
                psycopg.sql.Identifier(table))).fetchone()[0]
    except (OSError, IndexError, psycopg.Error):
        return 0


# -- the database down under a running server -----------------------------------------------------------------------------
def _answer(r: httpx.Response) -> tuple[int, dict, str | None]:
    return r.status_code, r.json(), r.headers.get("retry-after")


def _watch_until_recovered(client: httpx.Client, index: str) -> list[tuple[int, dict, str | None]]:
    """Search every 0.1 s until 5 answers in a row are 200 (or RECOVERY_DEADLINE_S): (status, body, Retry-After)
    of each."""
    answers: list[tuple[int, dict, str | None]] = []
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while time.monotonic() < deadline:
        answers.append(_answer(search(client, index, search="a cat")))
        if len(answers) >= 5 and all(a[0] == 200 for a in answers[-5:]):
            break
        time.sleep(0.1)
    return answers


def _refused_meanwhile(log: str) -> int:
    """The number of requests the server's recovery line says it refused during the outage."""
    return int(re.search(r"database reachable again after [\d.]+ s \((\d+) requests refused meanwhile\)", log)[1])


def _assert_clean_refusals(answers) -> None:
    for status, body, retry_after in answers:
        assert status in (200, 503), (status, body)
        if status == 503:
            assert body["error"]["code"] == "DatabaseUnavailable" and retry_after is not None, body


def test_killed_embedded_postgres_is_started_again_and_requests_recover(served_home, servers):
    server = Served(served_home)
    servers.append(server)
    pgdata = served_home / "pgdata"
    with server.client() as client:
        assert search(client, "rel", search="a cat").status_code == 200
        killed = postmaster_pid(pgdata)
        os.kill(killed, signal.SIGKILL)
        answers = _watch_until_recovered(client, "rel")
    _assert_clean_refusals(answers)
    assert answers[0][0] == 503  # the first request found its connection cut
    assert answers[-1][0] == 200, [a[0] for a in answers]  # and the API recovered
    recovered = next(i for i, a in enumerate(answers) if a[0] == 200)
    assert all(a[0] == 200 for a in answers[recovered:]), [a[0] for a in answers]
    assert postmaster_pid(pgdata) != killed
    log = server.stderr()
    assert log.count("database unavailable") == 1 and log.count("started it again") == 1, log
    assert log.count("database reachable again") == 1 and "Traceback" not in log, log
    assert log.index("database unavailable") < log.index("started it again") < log.index("database reachable again")
    # every 503 came from the outage the server knew of (the last ones may cross the recovery: not counted)
    assert 1 <= _refused_meanwhile(log) <= recovered, log
    assert server.stop(signal.SIGTERM) == -signal.SIGTERM
    assert_embedded_stopped(pgdata)


class OwnServer:
    """A PostgreSQL server of one's own, as a user would point PIXSEARCH_DATABASE_URL at: a data directory made
    with the embedded binaries, run by an unprivileged user when we are root, on 127.0.0.1 with trust
    authentication (tests only) and a Unix socket in a folder anyone may enter."""

    def __init__(self, base: Path):
        self.user = node_os_user()
        self.base, self.pgdata, self.sockets = base, base / "data", base / "sockets"
        base.chmod(0o755)
        _grant_search(base, self.user)
        self.sockets.mkdir()
        self.sockets.chmod(0o777)
        with socket_bound() as port:
            self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.pgdata.mkdir(mode=0o700)
        self.user.chown(self.pgdata)
        self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=utf8")
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.sockets}'\nfsync = off\n")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([str(PG_BIN / program), *args], check=True, cwd="/", stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120, **self.user.run_kwargs())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def socket_bound():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def own_server():
    server = OwnServer(Path(tempfile.mkdtemp(prefix="pixsearch-own-server-")))
    yield server
    server.remove()


def test_own_server_stopped_under_the_api_is_a_fast_503_with_one_log_line_and_recovers(
        own_server, model_cache, servers):
    home = new_home(model_cache)
    try:
        env = {"PIXSEARCH_DATABASE_URL": own_server.url}
        make_photos(home / "photos", 4)
        assert run_cli("index", str(home / "photos"), "--index", "own", home=home, env=env).returncode == 0
        created = run_cli("keys", "create", "--role", "query", "--name", "outage test", home=home, env=env)
        stored_key = created.stdout.strip().splitlines()[-1]
        server = Served(home, env)
        servers.append(server)
        with server.client(stored_key) as client, server.client("never-seen-" + secrets.token_hex(8)) as stranger:
            assert search(client, "own", search="a cat").status_code == 200
            own_server.stop("fast")
            refused = []
            for _ in range(12):
                for who in (client, stranger):  # a cached key, and one the server must look up (and cannot)
                    refused.append(_answer(search(who, "own", search="a dog")))
            own_server.start()
            answers = _watch_until_recovered(client, "own")
        _assert_clean_refusals(refused)
        assert {status for status, *_ in refused} == {503}
        _assert_clean_refusals(answers)
        assert answers[-1][0] == 200, [a[0] for a in answers]
        first_ok = next(i for i, a in enumerate(answers) if a[0] == 200)
        assert all(a[0] == 200 for a in answers[first_ok:]), [a[0] for a in answers]
        log = server.stderr()
        assert log.count("database unavailable") == 1 and log.count("database reachable again") == 1, log
        assert log.index("database unavailable") < log.index("database reachable again")
        # the requests sent while the server was stopped were all refused as part of the one outage
        assert len(refused) <= _refused_meanwhile(log) <= len(refused) + first_ok, log
        assert "Traceback" not in log and len(log.splitlines()) <= 6, log
        assert server.stop(signal.SIGTERM) == -signal.SIGTERM
    finally:
        remove_home(home)


# -- writes killed midway: all or nothing ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def writes_home(model_cache):
    home = new_home(model_cache)
    assert run_cli("indexes", "create", "up", "--photos", home=home).returncode == 0
    admin = run_cli("keys", "create", "--role", "admin", "--name", "writes", home=home).stdout.strip().splitlines()[-1]
    yield home, admin
    remove_home(home)


def _jpeg(i: int, size: int = 480) -> bytes:
    buffer = io.BytesIO()
    source = sorted(sample_files().values())[i % 8]
    image = Image.open(source).convert("RGB").resize((size, size * 3 // 4)).rotate(i * 7 + 3)
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_upload_killed_midway_leaves_each_image_whole_or_absent(writes_home, servers):
    home, admin = writes_home
    folder = home / "uploads" / "up"
    images = [(f"kill-{i:02d}.jpg", _jpeg(i)) for i in range(12)]
    server = Served(home)
    servers.append(server)

    def upload() -> None:
        with contextlib.suppress(httpx.HTTPError), server.client(admin) as client:
            client.post("/indexes/up/images", files=[("files", (n, d, "image/jpeg")) for n, d in images])

    sender = threading.Thread(target=upload)
    sender.start()
    deadline = time.monotonic() + 60
    while len(list(folder.glob("*-kill-*.jpg"))) < 3 and sender.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    server.kill()  # SIGKILL, most likely between one image's file and its row
    sender.join(60)

    # What a kill can leave, placed by hand as well: a file whose row never committed, a temporary file, and the
    # file of an upload still in progress in another process (locked) — which must be left alone.
    orphan = folder / f"{'0' * 16}-orphan.jpg"
    orphan.write_bytes(_jpeg(99))
    temporary = folder / f".{'1' * 16}-gone.jpg.abc123.tmp"
    temporary.write_bytes(b"partial")
    in_progress = folder / f"{'2' * 16}-in-progress.jpg"
    in_progress.write_bytes(_jpeg(98))
    with open(in_progress, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_SH)
        server = Served(home)
        servers.append(server)
    assert not orphan.exists() and not temporary.exists() and in_progress.exists()
    assert "of unfinished uploads" in server.stderr()
    in_progress.unlink()

    with server.client(admin) as client:
        rows = {Path(h["path"]).name: h["id"] for h in search(client, "up", top=1000, select="id,path").json()["value"]}
        files = {p.name for p in folder.iterdir()}
        assert not [name for name in files if name.endswith(".tmp")]
        assert set(rows) == files  # every file has its row, every row its file
        for name, key in rows.items():
            doc = client.get(f"/indexes/up/docs/{key}").json()
            assert doc["image"] is not None and doc["semantic"] is not None
            assert client.get(f"/thumbnails/{key}", params={"index": "up", "size": 128}).status_code == 200
        whole = [name for name, _ in images if any(row.endswith(f"-{Path(name).stem}.jpg") for row in rows)]
        assert len(whole) < len(images)  # the kill came before the end
        # the rest can be sent again and lands whole
        again = client.post("/indexes/up/images", files=[("files", (n, d, "image/jpeg")) for n, d in images])
        assert again.status_code == 200 and all(v["status"] for v in again.json()["value"])
    assert server.stop() == -signal.SIGTERM


def test_document_batch_killed_midway_is_all_or_nothing(writes_home, servers):
    home, admin = writes_home
    server = Served(home)
    servers.append(server)
    rng = np.random.default_rng(7)

    def batch(trial: int) -> tuple[list[dict], np.ndarray]:
        vectors = rng.normal(size=(1000, 64)).astype(np.float32)
        return [{"@search.action": "upload", "id": f"t{trial}-{i}", "trial": trial, "v": vectors[i].tolist()}
                for i in range(1000)], vectors

    with server.client(admin) as client:
        # An exact vector field: a bulk load into an ANN field first drops its index, which the row held below
        # would block outside the batch's transaction; the batch is written the same way either way.
        assert client.put("/indexes/docs", json={
            "key": "id", "fields": [{"name": "trial", "type": "int", "filterable": True}],
            "vectorFields": [{"name": "v", "dimensions": 64, "algorithm": "exact"}]}).status_code in (200, 201)
        docs, _ = batch(0)
        assert client.post("/indexes/docs/docs/index", json={"value": docs}).status_code == 200
    docs, vectors = batch(1)
    pgdata = home / "pgdata"
    # The kill must land inside the batch's transaction. Another session inserts the batch's last key and does not
    # commit, so the batch's INSERT writes the rows before it and then waits (ON CONFLICT) for that session: the
    # server is killed while it waits, its transaction open with 999 rows written.
    with psycopg.connect(_embedded_url(pgdata), autocommit=True) as watcher, \
            psycopg.connect(_embedded_url(pgdata)) as blocker:
        table = _table_of(watcher, "docs")

        def size() -> int:
            return watcher.execute("SELECT pg_relation_size(quote_ident(%s)::regclass)", (table,)).fetchone()[0]

        size_before = size()
        blocker.execute(psycopg.sql.SQL("INSERT INTO {} (id, trial) VALUES ('t1-999', 1)").format(
            psycopg.sql.Identifier(table)))
        sender = threading.Thread(target=_post_quietly, args=(server, admin, "/indexes/docs/docs/index",
                                                              {"value": docs}))
        sender.start()
        deadline = time.monotonic() + 120
        while not (waiting := watcher.execute(
                "SELECT pid, backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                "wait_event = 'transactionid' AND query LIKE 'INSERT INTO%%pixsearch_staging%%'").fetchone()):
            assert sender.is_alive() and time.monotonic() < deadline, server.stderr()
            time.sleep(0.01)
        writer, has_written = waiting
        grown = size() - size_before
        server.kill()
        sender.join(60)
        blocker.rollback()  # the waiting INSERT goes on, then finds its client gone: its transaction rolls back
        deadline = time.monotonic() + 60
        while watcher.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (writer,)).fetchone():
            assert time.monotonic() < deadline, "the killed server's session did not end"
            time.sleep(0.05)
    assert has_written and grown > 999 * 64 * 4  # the transaction the kill landed in had written the rows
    server = Served(home)
    servers.append(server)
    with server.client(admin) as client:
        counted = search(client, "docs", filter="trial eq 1", top=1, count=True).json()["@odata.count"]
        assert counted == 0  # the kill came before the commit: nothing of the batch (never part of it)
        assert search(client, "docs", filter="trial eq 0", top=1, count=True).json()["@odata.count"] == 1000
        # the batch sent again lands whole
        assert client.post("/indexes/docs/docs/index", json={"value": docs}).status_code == 200
        assert search(client, "docs", filter="trial eq 1", top=1, count=True).json()["@odata.count"] == 1000
        assert np.allclose(client.get("/indexes/docs/docs/t1-500").json()["v"], vectors[500], atol=1e-5)
    assert server.stop() == -signal.SIGTERM


def _post_quietly(server: Served, key: str, path: str, body: dict) -> None:
    with contextlib.suppress(httpx.HTTPError), server.client(key) as client:
        client.post(path, json=body)


# -- full and read-only folders ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(where: Path, size: str, mode: str = "0700"):
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _upload(admin: httpx.Client, index: str, data: bytes) -> dict:
    r = admin.post(f"/indexes/{index}/images", files=[("files", ("big.jpg", data, "image/jpeg"))])
    assert r.status_code == 207, r.text
    return r.json()["value"][0]


def test_full_or_read_only_uploads_folder_is_a_clear_error_and_keeps_nothing(api_engine, admin, samples):
    name = "full-" + uuid.uuid4().hex[:6]
    index = api_engine.index(name, create=True)
    folder = api_engine.settings.home / "uploads" / name
    data = _jpeg(3, size=1200)
    if ROOT:
        with tmpfs(folder, "64k"):
            result = _upload(admin, name, data)
            assert result["statusCode"] == 507 and str(folder) in result["errorMessage"]
            assert "no space left" in result["errorMessage"]
            assert list(folder.iterdir()) == []  # no partial or temporary file
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
            result = _upload(admin, name, data)
            assert result["statusCode"] == 507 and "read-only file system" in result["errorMessage"]
    else:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o500)
        try:
            result = _upload(admin, name, data)
            assert result["statusCode"] == 507 and str(folder) in result["errorMessage"]
        finally:
            folder.chmod(0o700)
    assert index.count() == 0


@pytest.mark.skipif(not ROOT, reason="needs a tiny tmpfs mount (root)")
def test_full_database_disk_rolls_back_the_batch_with_a_clear_error(own_server, embedder, samples, tmp_path):
    """A tablespace on a tiny tmpfs stands in for a full data directory (the WAL stays on a disk with room, as a
    full table disk leaves it)."""
    space = own_server.base / "tiny"
    with tmpfs(space, "1m", mode="0700"):
        own_server.user.chown(space)
        with psycopg.connect(own_server.url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS fill")
            conn.execute(psycopg.sql.SQL("CREATE TABLESPACE tiny LOCATION {}").format(psycopg.sql.Literal(str(space))))
            conn.execute("CREATE DATABASE fill")
            conn.execute("ALTER DATABASE fill SET default_tablespace = tiny")
        url = own_server.url.rsplit("/", 1)[0] + "/fill"
        try:
            make_photos(tmp_path / "photos", 120, size=200)
            settings = Settings.load(home=tmp_path / "home", database_url=url, batch_size=8)
            with Engine(settings, embedder=embedder) as engine:
                index = engine.index("fill", create=True)
                with pytest.raises(DatabaseFull, match="no space left in the database server's data directory"):
                    index.add_paths([tmp_path / "photos"])
                rows = index.count()
            assert rows % 8 == 0 and 0 < rows < 120  # the batches before the full one, whole
        finally:
            with psycopg.connect(own_server.url, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS fill")
                conn.execute("DROP TABLESPACE IF EXISTS tiny")


# -- ingest under faults ---------------------------------------------------------------------------------------------------
def test_files_deleted_truncated_or_locked_during_ingest_are_per_file_failures(own_server, model_cache, tmp_path):
    """The files are changed once the run's first batch is written. As root, the run drops the capabilities that
    ignore file permissions (setpriv), so a folder locked with chmod 000 is locked for it too; that is also why it
    uses the server of its own (reachable over TCP) rather than an embedded one behind a private folder."""
    if ROOT and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: chmod 000 would not lock a folder")
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if ROOT else []
    home = new_home(model_cache)
    name = "faults-" + uuid.uuid4().hex[:6]
    photos = tmp_path / "photos"
    tmp_path.chmod(0o755)
    make_photos(photos / "a-ok", 48, size=200)
    make_photos(photos / "y-later-locked", 8, size=200, start=100)
    faults = photos / "z-faults"
    deleted = make_photos(faults / "deleted", 3, size=200, start=200)
    truncated = make_photos(faults / "truncated", 3, size=200, start=300)
    locked_during = make_photos(faults / "locked-during", 3, size=200, start=400)
    make_photos(faults / "locked-before", 2, size=200, start=500)
    (faults / "locked-before").chmod(0)
    env = dict(os.environ, PIXSEARCH_HOME=str(home), PIXSEARCH_DATABASE_URL=own_server.url, PIXSEARCH_BATCH_SIZE="8")

    def index_run() -> subprocess.Popen:
        return subprocess.Popen([*prefix, str(PIXSEARCH), "index", str(photos), "--index", name, "--json"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    try:
        proc = index_run()
        deadline = time.monotonic() + 120
        while not _own_rows(own_server, name):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.02)
        for path in deleted:
            path.unlink()
        for path in truncated:
            path.write_bytes(path.read_bytes()[:1000])
        (faults / "locked-during").chmod(0)
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 3, stderr
        assert "Traceback" not in stderr
        failed = {f["path"]: f["reason"] for f in json.loads(stdout.strip().splitlines()[-1])["failed"]}
        assert all("No such file" in failed[str(p)] for p in deleted), failed
        assert all("truncated" in failed[str(p)] for p in truncated), failed
        assert all(failed[str(p)] == "permission denied" for p in locked_during), failed
        assert "cannot list folder" in failed[str(faults / "locked-before")]
        assert len(failed) == 10 and _own_rows(own_server, name) == 56  # the run went on to every other file

        # a folder that cannot be read now is not a folder whose photos were deleted: its rows stay
        (photos / "y-later-locked").chmod(0)
        again = index_run()
        stdout, stderr = again.communicate(timeout=240)
        assert again.returncode == 3 and "cannot list folder" in stderr
        assert json.loads(stdout.strip().splitlines()[-1])["removed"] == 0
        assert _own_rows(own_server, name) == 56
    finally:
        for folder in (photos / "y-later-locked", faults / "locked-during", faults / "locked-before"):
            folder.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)


def _own_rows(server: OwnServer, index: str) -> int:
    try:
        with psycopg.connect(server.url, connect_timeout=2) as conn:
            table = conn.execute("SELECT table_name FROM pixsearch_indexes WHERE name = %s", (index,)).fetchone()
            if table is None:
                return 0
            return conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
                psycopg.sql.Identifier(table[0]))).fetchone()[0]
    except psycopg.Error:
        return 0


def test_a_file_changed_after_the_scan_is_stored_as_read(engine, index_name, tmp_path):
    """The row records the size and time of the bytes actually read, so the next run sees the file unchanged
    instead of embedding it again (or, worse, keeping the old state for new bytes)."""
    photos = make_photos(tmp_path / "photos", 3)
    replacement = make_photos(tmp_path / "other", 1, start=17)[0].read_bytes()

    class ChangeAfterScan(NoProgress):
        def start(self, total: int) -> None:  # called between the scan and the first read
            photos[1].write_bytes(replacement)
            os.utime(photos[1], ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))

    index = engine.index(index_name, create=True)
    first = index.add_paths([tmp_path / "photos"], progress=ChangeAfterScan())
    assert first.added == 3 and not first.failed
    stored = index.get([photo_id(str(photos[1]))], vectors=False)[photo_id(str(photos[1]))]
    assert stored["size_bytes"] == len(replacement)
    again = index.add_paths([tmp_path / "photos"])
    assert again.unchanged == 3 and again.embedded == 0

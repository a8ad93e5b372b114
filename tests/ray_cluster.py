"""A real local Ray cluster on loopback for the tests and bench/distributed.py: a head and further nodes, each a
`ray start --block` process in its own process group, 1 CPU each, no dashboard, in a private temp dir.

They are stopped by killing their process groups: never `ray stop`, which stops every Ray process on the machine
(other users of this machine may run Ray too).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,pgid=", "-e"], capture_output=True, text=True).stdout
    return [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]


def _descendants_of_group(pgid: int) -> list[int]:
    table = _processes()
    found = {pid for pid, _, group in table if group == pgid}
    grew = True
    while grew:
        more = {pid for pid, parent, _ in table if parent in found and pid not in found}
        found |= more
        grew = bool(more)
    return sorted(pid for pid, _, group in table if pid in found and group != pgid)


@dataclass
class RayNode:
    process: subprocess.Popen
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the node's whole process group (raylet, GCS, object store) and its workers (Ray starts those in
        sessions of their own, as children of the raylet)."""
        workers = _descendants_of_group(self.process.pid)
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def raylet_pids(self) -> list[int]:
        """The node's raylet process(es): what dies when a machine of a cluster dies."""
        out = subprocess.run(["ps", "-ww", "-o", "pid=,pgid=,args=", "-e"], capture_output=True, text=True).stdout
        pids = []
        for line in out.splitlines():
            pid, pgid, args = line.strip().split(None, 2)
            if int(pgid) == self.process.pid and "raylet" in args.split()[0]:
                pids.append(int(pid))
        return pids


@dataclass
class LocalRayCluster:
    """`with LocalRayCluster(nodes=2) as cluster:` ... cluster.address (host:port of the head's GCS)."""

    nodes: int = 2
    env: dict[str, str] = field(default_factory=dict)  # for every node's processes (e.g. PYTHONPATH)
    base_env: dict[str, str] | None = None  # what `env` adds to (None: this process's environment)
    node_env: dict[int, dict[str, str]] = field(default_factory=dict)  # extra environment for node i
    node_prefix: dict[int, list[str]] = field(default_factory=dict)  # a command to run node i's `ray start` under
    cpus: int = 1
    started: list[RayNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's socket paths must stay short (AF_UNIX limit): a temp dir right under /tmp.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))

    def _start(self, number: int, args: list[str]) -> RayNode:
        log = self.temp_dir / f"node{number}.log"
        env = {**(os.environ if self.base_env is None else self.base_env), **self.env, **self.node_env.get(number, {})}
        env.pop("RAY_ADDRESS", None)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*self.node_prefix.get(number, []), str(RAY), "start", "--block", "--num-cpus", str(self.cpus),
                 "--disable-usage-stats", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        node = RayNode(process, log)
        self.started.append(node)
        return node

    def start(self) -> "LocalRayCluster":
        node_ports = lambda: ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),  # noqa: E731
                              "--min-worker-port", "0", "--max-worker-port", "0", "--node-ip-address", "127.0.0.1"]
        self._start(0, ["--head", "--port", str(self.port), "--include-dashboard=false",
                        "--temp-dir", str(self.temp_dir),
                        # a dead node is noticed within seconds, not the default ~30 s
                        '--system-config={"health_check_period_ms":1000,"health_check_failure_threshold":3,'
                        '"health_check_initial_delay_ms":1000}', *node_ports()])
        self.wait_for_nodes(1)
        for number in range(1, self.nodes):
            self._start(number, ["--address", self.address, *node_ports()])
        self.wait_for_nodes(self.nodes)
        return self

    def alive_nodes(self) -> int:
        return int(self._ask("sum(1 for n in ray.nodes() if n['Alive'])") or 0)

    def free_cpus(self) -> float:
        """CPUs no actor or task holds right now (asked from a driver of its own)."""
        return float(self._ask("ray.available_resources().get('CPU', 0)") or 0)

    def _ask(self, expression: str) -> str | None:
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                f"print({expression})")
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        try:
            done = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True,
                                  timeout=60, env=env)
        except subprocess.TimeoutExpired:
            return None
        lines = done.stdout.strip().splitlines()
        return lines[-1] if done.returncode == 0 and lines else None

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.started:
                if node.process.poll() is not None:
                    raise RuntimeError(f"a Ray node exited: {node.log.read_text(errors='replace')[-3000:]}")
            if self.alive_nodes() >= count:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {count} nodes in {timeout} s")

    def stop(self) -> None:
        for node in reversed(self.started):
            node.kill(signal.SIGTERM)
        self.started.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""`pixsearch index --ray`: the image stage on a real local Ray cluster (a head and a second node, separate processes
on loopback, 1 CPU each, no dashboard; tests/ray_cluster.py), against a local run of the same folder."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from helpers import altered_copy, broken_files, noise_images, xmp_packet
from pixsearch.config import Settings
from pixsearch.ingest.distributed import ClusterError, plan_actors
from pixsearch.models.device import DeviceUnavailableError
from pixsearch.service import Engine
from pixsearch.store import IndexNotFoundError
from ray_cluster import LocalRayCluster, free_port

SRC = Path(__file__).resolve().parents[1] / "src"
NODE_ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.fixture(scope="module")
def ray_cluster():
    with LocalRayCluster(nodes=2, env=NODE_ENV) as cluster:
        yield cluster


@pytest.fixture
def photos(samples, tmp_path) -> Path:
    """The sample photos, one with caption sidecar, in two folders, and three files that cannot be decoded."""
    folder = tmp_path / "photos"
    shutil.copytree(samples, folder / "a")
    first = sorted((folder / "a").iterdir())[0]
    first.with_suffix(".xmp").write_bytes(xmp_packet(title="Harbour at dawn", description="boats", subjects=("sea",)))
    (folder / "b").mkdir()
    for path in sorted((folder / "a").glob("*.jpg"))[:3]:
        altered_copy(path, folder / "b" / path.name)
    broken_files(folder / "broken")
    return folder


def _without_times(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("stage_seconds", "elapsed_seconds")}


def _rows(engine: Engine, name: str, prefix: str = "/") -> dict[str, dict]:
    idx = engine.index(name)
    keys = [key for key, _ in idx.store.paths_under(prefix)]
    return idx.get(keys, vectors=True)


def test_a_folder_indexed_on_the_cluster_is_what_a_local_run_gives(engine, ray_cluster, photos, home, index_name):
    local = engine.index(index_name + "-local", create=True).add_paths([photos])
    assert local.added > 30 and len(local.failed) == 3
    done = run_cli("index", str(photos), "--index", index_name, "--ray", ray_cluster.address, "--json", home=home)
    assert done.returncode == 3, done.stderr  # some files failed: the same exit status as a local run's
    assert _without_times(json.loads(done.stdout)) == _without_times(local.to_json())
    here, there = _rows(engine, index_name + "-local"), _rows(engine, index_name)
    assert here.keys() == there.keys() and len(here) == local.added
    assert_same_rows(here, there, [vf.name for vf in engine.index(index_name).spec.vector_fields])
    assert any(row.get("title") == "Harbour at dawn" for row in there.values())  # the sidecar read on a worker


def assert_same_rows(here: dict, there: dict, vector_fields: list[str]) -> None:
    """Rows of a local run and of a cluster run: the same fields, and vectors within cosine 0.9999."""
    for key, row in here.items():
        other = there[key]
        assert {k: v for k, v in row.items() if k not in vector_fields} == \
            {k: v for k, v in other.items() if k not in vector_fields}
        for name in vector_fields:
            if row.get(name) is None:
                assert other.get(name) is None, (key, name)
                continue
            cosine = float(np.dot(row[name], other[name]) / np.linalg.norm(row[name]) / np.linalg.norm(other[name]))
            assert cosine >= 0.9999, (key, name, cosine)


def test_a_rerun_embeds_nothing_and_moves_follow_their_files(engine, ray_cluster, photos, index_name):
    idx = engine.index(index_name, create=True)
    first = idx.add_paths([photos], ray=ray_cluster.address)
    assert first.added > 30
    again = engine.index(index_name).add_paths([photos], ray=ray_cluster.address)
    assert (again.added, again.updated, again.moved, again.embedded_keys) == (0, 0, 0, [])
    assert again.unchanged == first.added
    moved = sorted((photos / "a").glob("*.png"))[0]
    moved.rename(photos / "b" / ("renamed-" + moved.name))
    changed = sorted((photos / "b").glob("*.jpg"))[0]
    altered_copy(sorted((photos / "a").glob("*.jpg"))[-1], changed)
    third = engine.index(index_name).add_paths([photos], ray=ray_cluster.address)
    assert (third.added, third.updated, third.moved, third.removed) == (0, 1, 1, 0)
    assert engine.index(index_name).count() == first.added


class KillOnFirstWrite:
    """An IngestProgress that kills a Ray node's raylet (what dies when its machine dies) once the first file is
    done, i.e. mid-run, with batches in flight on every node."""

    def __init__(self, node) -> None:
        self.node, self.killed, self.done = node, [], 0

    def start(self, total: int) -> None:
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.killed:
            self.killed.extend(self.node.raylet_pids())
            for pid in self.killed:
                os.kill(pid, signal.SIGKILL)

    def failure(self, path: str, reason: str) -> None:
        pass


def assert_every_file_once(engine: Engine, name: str, count: int) -> None:
    idx = engine.index(name)
    with engine.db.connection() as conn:
        total, paths = conn.execute(f"SELECT count(*), count(DISTINCT path) FROM {idx.spec.table_name}").fetchone()
    assert total == paths == count


@pytest.mark.parametrize("reads", ["auto", "driver"])  # the workers read, or the driver sends the bytes
def test_a_node_dying_mid_run_still_ends_with_every_file_once(home, embedder, tmp_path, index_name, reads):
    folder = tmp_path / "noise"
    noise_images(folder, 64, 120, 160, seed=5)
    with LocalRayCluster(nodes=2, env=NODE_ENV) as cluster, \
            Engine(Settings.load(home=home, batch_size=4, ray_reads=reads), embedder=embedder) as engine:
        progress = KillOnFirstWrite(cluster.started[1])
        report = engine.index(index_name, create=True).add_paths([folder], ray=cluster.address, progress=progress)
        assert progress.killed and progress.done == 64
        assert (report.added, report.failed) == (64, [])
        assert_every_file_once(engine, index_name, 64)


def test_without_ray_installed_the_error_says_how_to_install_it(home, tmp_path, index_name):
    (tmp_path / "p").mkdir()
    code = ("import sys; sys.modules['ray'] = None; from pixsearch.cli.main import app; "
            "sys.argv[0] = 'pixsearch'; app()")
    env = dict(os.environ, PIXSEARCH_HOME=str(home))
    done = subprocess.run([sys.executable, "-c", code, "index", str(tmp_path / "p"), "--index", index_name,
                           "--ray", "127.0.0.1:6379"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "pip install 'pixsearch[ray]'" in done.stderr and "Traceback" not in done.stderr, done.stderr
    with Engine(Settings.load(home=home)) as engine, pytest.raises(IndexNotFoundError):
        engine.index(index_name)


def test_a_wrong_address_is_one_clear_error_before_any_work(home, engine, photos, index_name):
    port = free_port()
    done = run_cli("index", str(photos), "--index", index_name, "--ray", f"127.0.0.1:{port}", home=home)
    assert done.returncode == 1 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in done.stderr, done.stderr
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([str(Path(sys.executable).with_name("pixsearch")), "index", str(photos), "--index",
                           index_name, "--ray", "auto"], capture_output=True, text=True, timeout=120,
                          env=dict(env, PIXSEARCH_HOME=str(home)), stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and "RAY_ADDRESS" in done.stderr, done.stderr
    with pytest.raises(IndexNotFoundError):
        engine.index(index_name)
    idx = engine.index(index_name, create=True)
    with pytest.raises(ClusterError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        idx.add_paths([photos], ray=f"127.0.0.1:{port}")
    assert engine.index(index_name).count() == 0


def test_ray_reads_is_one_of_three_wherever_it_comes_from(home, ray_cluster, photos, index_name, monkeypatch):
    assert Settings.load(home=home).ray_reads == "auto"
    monkeypatch.setenv("PIXSEARCH_RAY_READS", " Driver ")
    assert Settings.load(home=home).ray_reads == "driver"
    assert Settings.load(home=home, ray_reads="workers").ray_reads == "workers"
    with pytest.raises(ValueError, match="setting ray_reads must be one of auto, workers, driver"):
        Settings.load(home=home, ray_reads="nodes")
    done = run_cli("index", str(photos), "--index", index_name, "--ray", ray_cluster.address, "--ray-reads", "all",
                   home=home)
    assert done.returncode == 1 and "setting ray_reads must be one of auto, workers, driver, got 'all'" in \
        done.stderr, done.stderr


def test_an_address_that_answers_but_is_not_a_ray_head_is_one_clear_error_not_a_hang(home, engine, photos,
                                                                                     index_name):
    """A web server, and a port that accepts connections but never says a word: ray.init would retry either for
    minutes; the run is refused within the connect timeout, before any work."""
    web = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        address = f"127.0.0.1:{web.server_address[1]}"
        done = run_cli("index", str(photos), "--index", index_name, "--ray", address, home=home, timeout=120)
        assert done.returncode == 1 and f"{address} is not a Ray head: it does not speak gRPC" in done.stderr, \
            done.stderr
        assert "Traceback" not in done.stderr
        quiet = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ClusterError, match=f"{quiet} is not a Ray head: it did not reply"):
            engine.index(index_name, create=True).add_paths([photos], ray=quiet)
    finally:
        web.shutdown()
        web.server_close()
        silent.close()
    assert engine.index(index_name).count() == 0


def _hiding(folder: Path) -> list[str]:
    """A command prefix for a node's `ray start`: it runs in a mount namespace of its own, where an empty tmpfs
    hides `folder` (a node whose machine does not mount the photos' share)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"',
            str(folder)]


def test_with_ray_reads_workers_a_node_that_cannot_see_the_folder_or_runs_another_pixsearch_is_refused(
        home, embedder, photos, tmp_path_factory, index_name):
    other = tmp_path_factory.mktemp("other-src")
    shutil.copytree(SRC, other, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    version = other / "pixsearch" / "__init__.py"
    version.write_text(version.read_text().replace('__version__ = "', '__version__ = "0.0.0-other+'))
    with LocalRayCluster(nodes=2, env=NODE_ENV, node_prefix={1: _hiding(photos.parent)},
                         node_env={1: {"PYTHONPATH": str(other)}}) as cluster, \
            Engine(Settings.load(home=home, ray_reads="workers"), embedder=embedder) as engine:
        with pytest.raises(ClusterError) as refused:
            engine.index(index_name, create=True).add_paths([photos], ray=cluster.address)
        assert engine.index(index_name).count() == 0
    message = str(refused.value)
    assert f"cannot see {photos}" in message and "pixsearch 0.0.0-other+" in message, message
    problems = message.splitlines()[1:]
    assert len(problems) == 2 and problems[0].split(":")[0] == problems[1].split(":")[0], message  # one node's


def _work_of_nodes(caplog) -> dict[str, tuple[int, int]]:
    """node id prefix: (batches finished, of them with bytes sent from the driver), from the stage's last report."""
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("image stage on Ray: ")][-1]
    found = re.findall(r"node \S+ \((\w+)\): (\d+) batches, (\d+) of them read here and sent", line)
    return {node: (int(batches), int(sent)) for node, batches, sent in found}


def test_a_node_that_cannot_see_the_folder_gets_its_photos_through_rays_object_store(
        home, embedder, photos, index_name, caplog):
    """ray_reads auto (the default): the driver reads the photos (and their sidecars) of the hidden node's batches
    and sends them; the rows, captions and failures are a local run's."""
    for number, path in enumerate(sorted((photos / "a").glob("*.jpg"))):
        path.with_suffix(".txt").write_text(f"caption {number} from a sidecar beside the photo")
    caplog.set_level(logging.INFO, logger="pixsearch.ingest.distributed")
    with LocalRayCluster(nodes=2, env=NODE_ENV, node_prefix={1: _hiding(photos.parent)}) as cluster, \
            Engine(Settings.load(home=home, batch_size=4), embedder=embedder) as engine:
        local = engine.index(index_name + "-local", create=True).add_paths([photos])
        assert local.added > 30 and len(local.failed) == 3
        there = engine.index(index_name, create=True).add_paths([photos], ray=cluster.address)
        assert _without_times(there.to_json()) == _without_times(local.to_json())
        here_rows, there_rows = _rows(engine, index_name + "-local"), _rows(engine, index_name)
        assert here_rows.keys() == there_rows.keys() and len(here_rows) == local.added
        assert_same_rows(here_rows, there_rows, [vf.name for vf in engine.index(index_name).spec.vector_fields])
        described = [row for row in there_rows.values() if (row.get("description") or "").endswith("beside the photo")]
        # every sidecar read, wherever its photo was decoded (one photo's XMP description outranks its .txt)
        assert len(described) >= len(list((photos / "a").glob("*.txt"))) - 1 > 10
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "cannot see" in r.getMessage()]
    assert len(warned) == 1 and f"cannot see {photos}" in warned[0] and "object store" in warned[0], warned
    hidden = re.search(r"node \S+ \((\w+)\)", warned[0]).group(1)
    work = _work_of_nodes(caplog)
    assert hidden in work and len(work) == 2, work
    batches, sent = work.pop(hidden)
    assert batches >= 1 and sent == batches, (hidden, batches, sent)  # it decoded and embedded bytes sent to it
    [(others, sent_to_others)] = work.values()
    assert others >= 1 and sent_to_others == 0  # the node that sees the folder read its own


def test_with_ray_reads_driver_every_batch_travels_from_the_driver(home, embedder, ray_cluster, tmp_path, caplog,
                                                                   index_name):
    folder = tmp_path / "noise"
    noise_images(folder, 24, 120, 160, seed=11)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    caplog.set_level(logging.INFO, logger="pixsearch.ingest.distributed")
    with Engine(Settings.load(home=home, batch_size=4, ray_reads="driver"), embedder=embedder) as engine:
        local = engine.index(index_name + "-local", create=True).add_paths([folder])
        there = engine.index(index_name, create=True).add_paths([folder], ray=ray_cluster.address)
        assert _without_times(there.to_json()) == _without_times(local.to_json()) and len(there.failed) == 1
        assert_same_rows(_rows(engine, index_name + "-local"), _rows(engine, index_name),
                         [vf.name for vf in engine.index(index_name).spec.vector_fields])
    work = _work_of_nodes(caplog)
    assert len(work) == 2 and all(batches >= 1 and sent == batches for batches, sent in work.values()), work


def test_sigterm_cancels_the_run_cleanly(home, tmp_path, index_name, engine):
    folder = tmp_path / "noise"
    noise_images(folder, 96, 120, 160, seed=9)
    with LocalRayCluster(nodes=2, env=NODE_ENV) as cluster:
        env = dict(os.environ, PIXSEARCH_HOME=str(home), PIXSEARCH_BATCH_SIZE="4")
        exe = Path(sys.executable).with_name("pixsearch")
        proc = subprocess.Popen([str(exe), "index", str(folder), "--index", index_name, "--ray", cluster.address],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline, rows = time.monotonic() + 300, 0
            while time.monotonic() < deadline and proc.poll() is None and rows < 8:
                try:
                    rows = engine.index(index_name).count()
                except IndexNotFoundError:
                    rows = 0
                time.sleep(0.1)
            assert proc.poll() is None, proc.stderr.read().decode()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == -signal.SIGTERM, proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
        written = engine.index(index_name).count()
        assert 8 <= written < 96
        assert cluster.free_cpus() == 2  # the run's actors are gone
        report = engine.index(index_name).add_paths([folder], ray=cluster.address)
    assert report.added == 96 - written and report.unchanged == written
    with engine.db.connection() as conn:
        table = engine.index(index_name).spec.table_name
        total, paths = conn.execute(f"SELECT count(*), count(DISTINCT path) FROM {table}").fetchone()
    assert total == paths == 96


def test_through_citus_the_writes_land_in_the_shards(ray_cluster, citus_cluster, citus_home, embedder, photos):
    dsn = citus_cluster.dsn + "?sslmode=prefer"
    name = "ray-" + uuid.uuid4().hex[:6]
    with Engine(Settings.load(home=citus_home, database_url=dsn, distribute=True), embedder=embedder) as engine:
        report = engine.index(name, create=True).add_paths([photos], ray=ray_cluster.address)
        idx = engine.index(name)
        assert idx.store.distributed and report.added > 30
        with engine.db.connection() as conn:
            per_node = conn.execute(
                "SELECT s.nodename || ':' || s.nodeport, sum(r.result::bigint) FROM run_command_on_shards(%s, "
                "$$SELECT count(*) FROM %%s$$) r JOIN citus_shards s USING (shardid) GROUP BY 1",
                (idx.spec.table_name,)).fetchall()
        assert sum(count for _, count in per_node) == report.added
        # rows on several workers (the session's cluster has 2 or 3, as another test adds one)
        assert len([count for _, count in per_node if count > 0]) >= 2, per_node


def _node(name: str, cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    """A node as ray.nodes() describes it."""
    resources = {"CPU": cpus, "memory": 8e9, **({"GPU": gpus} if gpus else {})}
    return {"NodeID": name * 56, "Alive": alive, "NodeManagerAddress": f"10.0.0.{ord(name) % 200}",
            "Resources": resources}


def test_actors_ask_for_the_gpus_a_cluster_reports_and_for_none_when_it_has_none():
    gpu_box, cpu_box = _node("a", 8, gpus=2), _node("b", 4)
    plans = plan_actors([gpu_box, cpu_box, _node("c", 16, gpus=4, alive=False)], "auto")
    asked = [(p.node[0], p.options()["num_gpus"], p.options()["num_cpus"], p.device) for p in plans]
    assert asked == [("a", 1.0, 4, "auto"), ("a", 1.0, 4, "auto"), ("b", 0.0, 4, "cpu")]
    assert [p.options()["scheduling_strategy"].node_id for p in plans] == ["a" * 56] * 2 + ["b" * 56]

    assert [(p.node[0], p.gpus, p.device) for p in plan_actors([gpu_box, cpu_box], "cuda")] == \
        [("a", 1.0, "cuda"), ("a", 1.0, "cuda")]  # `cuda`: the GPUs only
    for device in ("cpu", "auto"):
        nodes = [gpu_box, cpu_box] if device == "cpu" else [cpu_box, _node("d", 2)]
        plans = plan_actors(nodes, device)
        assert [(p.options()["num_gpus"], p.device) for p in plans] == [(0.0, "cpu")] * 2, device
        assert [p.cpus for p in plans] == [n["Resources"]["CPU"] for n in nodes]
    with pytest.raises(DeviceUnavailableError, match="no GPUs"):
        plan_actors([cpu_box], "cuda")

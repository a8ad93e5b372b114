"""Operations: /metrics in Prometheus' text format (through a real server, parsed with prometheus-client's own parser),
an indexing watcher's metrics on loopback, `pixsearch serve --log-format json`, and a CLI that writes nothing on stderr
on a normal machine.

Real parts only: uvicorn servers on 127.0.0.1, the session's embedded PostgreSQL, a PostgreSQL server of the test's
own that is stopped under a server (tests/test_reliability.py's OwnServer), `pixsearch` subprocesses.
"""
from __future__ import annotations

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
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_cli
from helpers import copy_some
from pixsearch.api import create_app
from pixsearch.api.server import serving_in_thread
from pixsearch.config import Settings
from pixsearch.service import Engine

PIXSEARCH = Path(sys.executable).with_name("pixsearch")
ADMIN, QUERY = "metrics-admin-" + secrets.token_hex(6), "metrics-query-" + secrets.token_hex(6)
# Only a deadline for what should come (the pool queue forming, a watcher's batch, the database returning).
DEADLINE_S = 120.0


def scrape(client: httpx.Client, **headers: str) -> dict[tuple[str, tuple], float]:
    """GET /metrics, parsed: {(sample name, sorted labels): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S:.0f} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(home, embedder, sample_index):
    """A server on the session's database with a pool of ONE connection (so a held connection makes requests
    queue); yields (base URL, engine)."""
    with Engine(Settings.load(home=home, pool_size=1), embedder=embedder) as engine:
        engine.db  # opened before serving, as `pixsearch serve` does
        with serving_in_thread(create_app(engine, admin_keys=[ADMIN], query_keys=[QUERY])) as url:
            yield url, engine


def test_requests_are_counted_by_route_template_and_status_with_latency(served, sample_index):
    url, _ = served
    stranger = "no-such-index-" + uuid.uuid4().hex[:8]
    text = "a red bicycle " + uuid.uuid4().hex[:6]  # a query text this process has not embedded yet
    with httpx.Client(base_url=url, timeout=60) as client:
        before = scrape(client)
        key = {"api-key": QUERY}
        first = client.post(f"/indexes/{sample_index}/docs/search", json={"search": text, "top": 3}, headers=key)
        middle = scrape(client)
        again = client.post(f"/indexes/{sample_index}/docs/search", json={"search": text, "top": 3}, headers=key)
        missing = client.post(f"/indexes/{stranger}/docs/search", json={"search": "x"}, headers=key)
        keyless = client.post(f"/indexes/{stranger}/docs/search", json={"search": "x"})  # refused by a middleware
        nowhere = client.get(f"/{stranger}/anything", headers={"api-key": ADMIN})
        after = scrape(client)
    assert (first.status_code, again.status_code, missing.status_code, keyless.status_code, nowhere.status_code) \
        == (200, 200, 404, 401, 404)
    route = "/indexes/{name}/docs/search"
    counted = lambda samples, status: value(samples, "pixsearch_http_requests_total",  # noqa: E731
                                            method="POST", route=route, status=status)
    assert counted(after, "200") - counted(before, "200") == 2
    assert counted(after, "404") - counted(before, "404") == 1
    assert counted(after, "401") - counted(before, "401") == 1
    assert value(after, "pixsearch_http_requests_total", method="GET", route="unmatched", status="404") >= 1
    histogram = lambda samples: value(samples, "pixsearch_http_request_duration_seconds_count",  # noqa: E731
                                      method="POST", route=route)
    assert histogram(after) - histogram(before) == 4
    assert value(after, "pixsearch_http_request_duration_seconds_bucket", method="POST", route=route, le="+Inf") \
        == histogram(after)
    # bounded labels: no raw path (index names, the unmatched path) became a label value
    assert not [k for k in after if any(stranger in v or sample_index in v for _, v in k[1])]
    # the query vector: embedded by the first search (a miss), taken from the cache by the second (a hit)
    hits, misses = "pixsearch_query_vector_cache_hits_total", "pixsearch_query_vector_cache_misses_total"
    assert value(middle, misses) - value(before, misses) >= 1
    assert value(after, hits) - value(middle, hits) >= 1 and value(after, misses) == value(middle, misses)
    assert value(after, "pixsearch_database_up") == 1


def test_metrics_are_open_on_loopback_and_admin_only_through_a_proxy(served):
    url, _ = served
    relayed = {"X-Forwarded-For": "203.0.113.7"}  # what a reverse proxy on this machine adds
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/metrics").status_code == 200  # this machine, straight to the server
        assert client.get("/metrics", headers=relayed).status_code == 401
        assert client.get("/metrics", headers={**relayed, "api-key": QUERY}).status_code == 403
        assert client.get("/metrics", headers={"Forwarded": "for=203.0.113.7", "api-key": QUERY}).status_code == 403
        assert client.get("/metrics", headers={**relayed, "api-key": ADMIN}).status_code == 200
        assert client.get("/metrics", headers={**relayed, "api-key": "wrong"}).status_code == 401
        # loopback opens /metrics only: other admin routes still need an admin key from here
        assert client.get("/indexes").status_code == 401


def test_two_apps_in_one_process_count_apart(served, home, embedder):
    url, _ = served
    with Engine(Settings.load(home=home), embedder=embedder) as engine, \
            serving_in_thread(create_app(engine, admin_keys=[ADMIN])) as other, \
            httpx.Client(base_url=other, timeout=60) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        assert value(scrape(client), "pixsearch_http_requests_total", method="GET", route="/healthz",
                     status="200") == 3
    with httpx.Client(base_url=url, timeout=60) as client:
        assert value(scrape(client), "pixsearch_http_requests_total", method="GET", route="/healthz",
                     status="200") == 0


# Starlette runs sync handlers in anyio's thread pool of 40 threads: as many requests as that can wait for a database
# connection at once; the one more waits for a thread.
THREADS = 40


def test_pool_in_use_and_waiting_follow_the_connections(served, sample_index):
    """With the pool's one connection held, searches queue for it: the scrape says so, and answers while every
    worker thread is taken by a waiting request (it is answered on the event loop, from memory)."""
    url, engine = served
    answers: list[int] = []

    def search() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            answers.append(c.post(f"/indexes/{sample_index}/docs/search", json={"search": "a cat"},
                                  headers={"api-key": QUERY}).status_code)

    with httpx.Client(base_url=url, timeout=60) as client:
        idle = scrape(client)
        assert value(idle, "pixsearch_database_pool_in_use") == 0
        assert value(idle, "pixsearch_database_pool_max") == 1
        with engine.db.connection():  # the pool's one connection, held by the test
            held = scrape(client)
            assert value(held, "pixsearch_database_pool_in_use") == 1
            assert value(held, "pixsearch_database_pool_waiting") == 0
            waiters = [threading.Thread(target=search) for _ in range(THREADS + 1)]
            for waiter in waiters:
                waiter.start()
            wait_for(lambda: value(scrape(client), "pixsearch_database_pool_waiting") == THREADS, "requests waiting")
        for waiter in waiters:
            waiter.join(120)
        assert answers == [200] * (THREADS + 1)
        done = scrape(client)
        assert value(done, "pixsearch_database_pool_waiting") == value(done, "pixsearch_database_pool_in_use") == 0


@pytest.fixture(scope="module")
def own_server():
    from test_reliability import OwnServer

    server = OwnServer(Path(tempfile.mkdtemp(prefix="pixsearch-metrics-own-")))
    yield server
    server.remove()


def test_an_outage_shows_as_database_down_and_recovers(own_server, embedder, tmp_path):
    home = Path(tempfile.mkdtemp(prefix="pixsearch-metrics-home-"))
    try:
        with Engine(Settings.load(home=home, database_url=own_server.url), embedder=embedder) as engine, \
                serving_in_thread(create_app(engine, admin_keys=[ADMIN])) as url, \
                httpx.Client(base_url=url, timeout=60, headers={"api-key": ADMIN}) as client:
            assert client.get("/indexes").status_code == 200
            up = scrape(client)
            assert value(up, "pixsearch_database_up") == 1 and value(up, "pixsearch_database_outages_total") == 0
            own_server.stop("fast")
            try:
                assert client.get("/indexes").status_code == 503
                down = scrape(client)  # answered from memory while the database is away
                assert value(down, "pixsearch_database_up") == 0
                assert value(down, "pixsearch_database_outages_total") == 1
                assert value(down, "pixsearch_database_pool_in_use") == 0
            finally:
                own_server.start()
            wait_for(lambda: value(scrape(client), "pixsearch_database_up") == 1, "recovery")
            assert client.get("/indexes").status_code == 200
            assert value(scrape(client), "pixsearch_database_outages_total") == 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- an indexing watcher's metrics --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_cache(home, embedder) -> Path:
    from PIL import Image

    embedder.embed_images([embedder.prepare_image(Image.new("RGB", (64, 48), (200, 30, 30)))])
    embedder.embed_texts(["a red square"])
    return home / "cache"


def _new_home(model_cache: Path) -> Path:
    from test_reliability import new_home

    return new_home(model_cache)


def _remove_home(home: Path) -> None:
    from test_reliability import remove_home

    remove_home(home)


def test_index_watch_serves_its_progress_on_loopback(model_cache, samples):
    home = _new_home(model_cache)
    folder = home / "photos"
    copy_some(samples, folder, ["cat-chelsea.png", "coffee.png", "rocket.jpg"])
    (folder / "notes.jpg").write_text("not an image\n")
    log = home / "watch.stderr"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([str(PIXSEARCH), "index", str(folder), "--index", "watched", "--watch",
                                 "--metrics-port", "0"], env=dict(os.environ, PIXSEARCH_HOME=str(home)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        found = wait_for(lambda: re.search(r"metrics: (http://127\.0\.0\.1:\d+)/metrics", log.read_text()) or
                         (proc.poll() is not None and pytest.fail(log.read_text())), "metrics link")
        labels = {"index": "watched"}
        with httpx.Client(base_url=found.group(1), timeout=30) as client:
            wait_for(lambda: "watching" in log.read_text(), "the watcher")
            first = scrape(client)
            assert value(first, "pixsearch_ingest_files_processed_total", **labels) == 4
            assert value(first, "pixsearch_ingest_files_failed_total", **labels) == 1
            assert value(first, "pixsearch_ingest_files_queued", **labels) == 0
            copy_some(samples, folder, ["astronaut.png", "moon.png"])
            (folder / "more-notes.jpg").write_text("still not an image\n")
            later = wait_for(lambda: (s := scrape(client)) and
                             value(s, "pixsearch_ingest_files_processed_total", **labels) >= 7 and s, "the batch")
            assert value(later, "pixsearch_ingest_files_processed_total", **labels) == 7
            assert value(later, "pixsearch_ingest_files_failed_total", **labels) == 2
            assert value(later, "pixsearch_ingest_watch_batches_total", **labels) >= 1
            assert value(later, "pixsearch_ingest_last_batch_timestamp_seconds", **labels) > 0
            assert value(later, "pixsearch_ingest_files_queued", **labels) == 0
        port = int(found.group(1).rsplit(":", 1)[1])
        listening = [c for c in __import__("psutil").Process(proc.pid).net_connections("tcp")
                     if c.status == "LISTEN" and c.laddr.port == port]
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"]  # loopback only: this process checks no keys
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        _remove_home(home)


def test_queued_counts_the_rest_of_the_run_and_what_the_watcher_holds(samples, tmp_path):
    from prometheus_client import generate_latest

    from pixsearch.api.metrics import IngestMetrics
    from pixsearch.ingest.watch import FolderWatcher

    metrics = IngestMetrics("q")
    queued = lambda: value({(s.name, tuple(sorted(s.labels.items()))): s.value  # noqa: E731
                            for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
                            for s in f.samples}, "pixsearch_ingest_files_queued", index="q")
    metrics.start(5)
    metrics.advance(2)
    assert queued() == 3
    metrics.stop()
    assert queued() == 0
    # a watcher that holds its batch (the folder is never quiet long enough): what it holds is queued
    with FolderWatcher([tmp_path], lambda *batch: None, debounce_s=3600, max_delay_s=3600) as watcher:
        metrics.watch_pending(watcher.pending)
        copy_some(samples, tmp_path, ["cat-chelsea.png", "coffee.png"])
        wait_for(lambda: queued() == 2, "two files queued")
        watcher.stop(flush=False)


# -- JSON logs ----------------------------------------------------------------------------------------------------------
def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in parsed:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    return parsed


def test_serve_log_format_json_logs_requests_and_no_secret(model_cache, samples, own_server):
    home = _new_home(model_cache)
    password = "pw-" + secrets.token_hex(8)
    # the test's own server trusts 127.0.0.1 (the password is never checked) but the URL carries one, as a
    # deployment's does: it must not reach the log, not even when the database goes away under the server
    dsn = own_server.url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    env = {"PIXSEARCH_DATABASE_URL": dsn}
    try:
        copy_some(samples, home / "photos", ["cat-chelsea.png", "coffee.png"])
        assert run_cli("index", str(home / "photos"), "--index", "logged", home=home, env=env).returncode == 0
        created = run_cli("keys", "create", "--role", "admin", home=home, env=env)
        key = created.stdout.strip().splitlines()[-1]
        wrong = "never-seen-" + secrets.token_hex(8)
        log = home / "serve.stderr"
        with open(log, "wb") as stderr:
            proc = subprocess.Popen([str(PIXSEARCH), "serve", "--port", "0", "--log-format", "json"],
                                    env=dict(os.environ, PIXSEARCH_HOME=str(home), **env), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            found = wait_for(lambda: re.search(r"search page: (http://127\.0\.0\.1:\d+)/", log.read_text()) or
                             (proc.poll() is not None and pytest.fail(log.read_text())), "the server")
            with httpx.Client(base_url=found.group(1), timeout=60) as client:
                ok = client.post("/indexes/logged/docs/search", json={"search": "a cat"}, headers={"api-key": key})
                assert ok.status_code == 200
                assert client.get(f"/indexes/logged/docs/x?api-key={key}", headers={"api-key": wrong}
                                  ).status_code == 401
                own_server.stop("fast")
                try:
                    assert client.post("/indexes/logged/docs/search", json={"search": "a dog"},
                                       headers={"api-key": key}).status_code == 503
                finally:
                    own_server.start()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        text = log.read_text()
        entries = _json_lines(text)
        requests = [e for e in entries if e["logger"] == "pixsearch.api.requests"]
        assert {(e["method"], e["route"], e["status"]) for e in requests} >= {
            ("POST", "/indexes/{name}/docs/search", 200), ("GET", "/indexes/{name}/docs/{key}", 401),
            ("POST", "/indexes/{name}/docs/search", 503)}
        assert all(isinstance(e["duration_ms"], (int, float)) and e["duration_ms"] >= 0 for e in requests)
        assert any(e["level"] == "warning" and "database unavailable" in e["message"] for e in entries)
        for secret in (key, wrong, password):
            assert secret not in text
    finally:
        _remove_home(home)


def test_serve_log_format_json_startup_error_is_one_json_line_without_the_password(tmp_path):
    password = "pw-" + secrets.token_hex(8)
    done = run_cli("serve", "--port", "0", "--log-format", "json", home=tmp_path / "home",
                   env={"PIXSEARCH_DATABASE_URL": f"postgresql://someone:{password}@127.0.0.1:1/nothing"})
    assert done.returncode == 1
    entries = _json_lines(done.stderr)
    assert [e["level"] for e in entries] == ["error"] and "cannot connect to PostgreSQL" in entries[0]["message"]
    assert password not in done.stderr + done.stdout


# -- a quiet CLI --------------------------------------------------------------------------------------------------------
def test_normal_commands_write_nothing_on_stderr_without_xdg_runtime_dir(home, sample_index, tmp_path):
    """XDG_RUNTIME_DIR is unset under cron, systemd services, containers and `su`; set to another user's folder
    after `su`. Neither is the user's problem: no line on stderr (run in a subprocess, where pytest's own warning
    filters do not apply)."""
    other_users = tmp_path / "runtime"
    other_users.mkdir(mode=0o755)  # not private: platformdirs refuses it and falls back, with a warning
    for runtime in (None, str(other_users)):
        env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "PYTHONWARNINGS")}
        if runtime is not None:
            env["XDG_RUNTIME_DIR"] = runtime
        for args in (["--help"], ["indexes", "list"], ["search", "a cat", "--index", sample_index, "--k", "3"]):
            done = subprocess.run([str(PIXSEARCH), *args], capture_output=True, text=True, timeout=300,
                                  env=dict(env, PIXSEARCH_HOME=str(home)), stdin=subprocess.DEVNULL)
            assert done.returncode == 0, (args, done.stderr)
            assert done.stderr == "", (runtime, args, done.stderr)
            assert done.stdout.strip()


def test_the_announced_port_accepts_connections_before_the_server_runs():
    """`pixsearch serve` announces its link once the port is bound: a client (a script, a supervisor's health
    check) connecting at once is queued until the server accepts, not refused."""
    import socket

    from pixsearch.api.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname(), timeout=10):
            pass
    finally:
        sock.close()

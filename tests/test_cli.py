"""The `pixsearch` command as scripts use it: real subprocesses, real stdout/stderr, real exit statuses."""
from __future__ import annotations

import json

from conftest import run_cli
from helpers import altered_copy, broken_files, copy_some, read_page_link

SOME = ["cat-chelsea.png", "coffee.png", "rocket.jpg", "china-temple.jpg", "imagenet-16-251.jpg"]


def test_index_search_and_batch_from_the_command_line(home, samples, tmp_path, index_name, embedder):
    embedder.embed_texts(["warm the class-embedding cache"])  # the subprocesses reuse the cache under home
    photos = tmp_path / "photos"
    copy_some(samples, photos, SOME)
    broken = broken_files(photos / "junk")

    first = run_cli("index", str(photos), "--index", index_name, home=home)
    assert first.returncode == 3, first.stderr  # some files failed
    assert first.stdout == ""
    assert f"{len(SOME)} added" in first.stderr and "3 failed" in first.stderr
    for path in broken.values():
        assert str(path) in first.stderr

    again = run_cli("index", str(photos), "--index", index_name, "--json", home=home)
    summary = json.loads(again.stdout)
    assert (summary["added"], summary["unchanged"], len(summary["failed"])) == (0, len(SOME), 3)

    found = run_cli("search", "a photo of a cat", "--json", "--k", "3", "--index", index_name, home=home)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)  # stdout holds JSON and nothing else
    assert len(hits) == 3 and hits[0]["path"].endswith("cat-chelsea.png")
    assert {"id", "path", "score"} <= set(hits[0]) and hits[0]["score"] >= hits[1]["score"]

    query_image = altered_copy(samples / "china-temple.jpg", tmp_path / "q.jpg")
    by_image = run_cli("search", "--image", str(query_image), "--json", "--index", index_name, home=home)
    assert json.loads(by_image.stdout)[0]["path"].endswith("china-temple.jpg")

    batch = tmp_path / "queries.txt"
    batch.write_text(f"a cup of coffee\n\nimage:{query_image}\nimage:{tmp_path / 'missing.jpg'}\na spotted dog\n")
    result = run_cli("search", "--batch", str(batch), "--json", "--k", "2", "--index", index_name, home=home)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 3 and len(lines) == 4
    assert lines[0][0]["path"].endswith("coffee.png")
    assert lines[1][0]["path"].endswith("china-temple.jpg")
    assert "missing.jpg" in lines[2]["query"] and "cannot read" in lines[2]["error"]
    assert lines[3][0]["path"].endswith("imagenet-16-251.jpg")

    plan = run_cli("explain", "a cat", "--index", index_name, home=home)
    assert plan.returncode == 0 and "Limit" in plan.stdout


def test_errors_are_one_clear_line_not_a_traceback(home, tmp_path):
    missing = run_cli("search", "a cat", "--index", "no-such-index", home=home)
    assert missing.returncode == 1
    assert "no index named 'no-such-index'" in missing.stderr and "Traceback" not in missing.stderr

    bad_db = run_cli("search", "a cat", home=home, env={"PIXSEARCH_DATABASE_URL": "postgresql://u:secret@127.0.0.1:9/x"})
    assert bad_db.returncode == 1
    assert "cannot connect" in bad_db.stderr and "secret" not in bad_db.stderr and "Traceback" not in bad_db.stderr

    both = run_cli("search", "cat", "--vector", str(tmp_path / "x.npy"), home=home)
    assert both.returncode == 1 and "not both" in both.stderr


def _postgres_running(pgdata) -> bool:
    return (pgdata / "postmaster.pid").exists()


def test_embedded_server_starts_on_demand_stops_after_the_run_and_keeps_its_data(samples, tmp_path, embedder, home):
    fresh = tmp_path / "fresh-home"
    (fresh / "cache").mkdir(parents=True)
    for cached in (home / "cache").glob("*.npy"):  # reuse the class-text cache, not the database
        (fresh / "cache" / cached.name).write_bytes(cached.read_bytes())
    photos = tmp_path / "photos"
    copy_some(samples, photos, ["coffee.png", "rocket.jpg"])
    first = run_cli("index", str(photos), home=fresh)
    assert first.returncode == 0, first.stderr
    assert not _postgres_running(fresh / "pgdata")  # stopped cleanly when the command ended
    again = run_cli("search", "a cup of coffee", "--json", "--k", "1", home=fresh)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["path"].endswith("coffee.png")
    assert not _postgres_running(fresh / "pgdata")


def test_a_killed_run_leaves_whole_batches_and_the_next_run_completes(engine, index_name, samples, tmp_path, home):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    photos = tmp_path / "photos"
    names = sorted(p.name for p in samples.iterdir())
    for copy in ("a", "b", "c"):  # ~100 files: the run must still be going when the first batches have landed
        copy_some(samples, photos / copy, names)
    total = 3 * len(names)
    idx = engine.index(index_name, create=True)
    exe = Path(sys.executable).with_name("pixsearch")
    env = dict(os.environ, PIXSEARCH_HOME=str(home), PIXSEARCH_BATCH_SIZE="4")
    proc = subprocess.Popen([str(exe), "index", str(photos), "--index", index_name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while idx.count() < 8 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    written = idx.count()
    assert 0 < written < total, "the run should have been killed part-way"
    assert written % 4 == 0  # whole batches only
    report = idx.add_paths([photos])
    assert (report.added, report.failed) == (total - written, [])
    assert idx.count() == total


def test_demo_indexes_the_samples_searches_and_serves_the_page(home, index_name):
    """The README's `make run`: `pixsearch demo --serve` ends with the server running and a working page link."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    exe = Path(sys.executable).with_name("pixsearch")
    proc = subprocess.Popen([str(exe), "demo", "--serve", "--port", "0", "--index", index_name],
                            env=dict(os.environ, PIXSEARCH_HOME=str(home)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        base, key, printed = read_page_link(proc)
        assert "sample photos in" in printed
        assert httpx.get(base, timeout=30).status_code == 200
        listed = httpx.post(f"{base}indexes/{index_name}/docs/search", headers={"api-key": key}, timeout=60,
                            json={"count": True, "facets": ["folder"], "top": 1}).json()
        folders = {f["value"].rsplit("/", 1)[1] for f in listed["@search.facets"]["folder"]}
        assert folders == {"scikit-image", "scikit-learn", "imagenet"} and listed["@odata.count"] >= 30
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130) and "Traceback" not in stderr, stderr  # 130: stopped by Ctrl+C, cleanly
    assert "cat-chelsea.png" in stdout and "more like cat-chelsea.png" in stdout

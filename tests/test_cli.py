"""The `pixsearch` command as scripts use it: real subprocesses, real stdout/stderr, real exit statuses."""
from __future__ import annotations

import json

from conftest import run_cli
from helpers import altered_copy, broken_files, copy_some

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

    both = run_cli("search", "cat", "--image", str(tmp_path / "x.jpg"), home=home)
    assert both.returncode == 1 and "not both" in both.stderr

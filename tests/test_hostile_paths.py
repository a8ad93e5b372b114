"""Hostile paths: symbolic links a watcher, regions or reindex could be led through, and one folder spelled two ways.

Every test here failed before the fix it covers (issue 19, items 1, 5 and 7). Real files and links, real embedded
PostgreSQL, the real `pixsearch` command for the watch mode.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import copy_some, noise_images
from pixsearch.search.request import SearchRequest
from pixsearch.store import PhotoLocation

SECRET = "zanzibar ledger"  # the caption sidecar of a private photo


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _paths(index) -> set[str]:
    return {hit.document["path"] for hit in index.query(SearchRequest(top=200))}


@pytest.fixture
def private(samples, tmp_path) -> Path:
    """A folder outside the library: two photos, one with a caption sidecar."""
    folder = tmp_path / "elsewhere" / "private"
    copy_some(samples, folder, ["astronaut.png", "moon.png"])
    (folder / "astronaut.png.txt").write_text(SECRET)
    return folder


def _wait_for(check, timeout: float = 60) -> None:
    """Wait for `check()`; the timeout only ends a hang (no assertion on how long it took)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not seen in time")
        time.sleep(0.1)


# -- item 1: the watch mode goes through the scan's checks ------------------------------------------------------------
@pytest.mark.parametrize("observer", ["--polling", "notifications"])
def test_watch_mode_indexes_nothing_behind_links(api_engine, samples, private, tmp_path, home, observer):
    library = tmp_path / "library"
    copy_some(samples, library, ["coffee.png"])
    name = _name("watch-links")
    exe = Path(sys.executable).with_name("pixsearch")
    args = [str(exe), "index", str(library), "--index", name, "--watch", "--json"]
    proc = subprocess.Popen(args + (["--polling"] if observer == "--polling" else []),
                            env=dict(os.environ, PIXSEARCH_HOME=str(home)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while "watching 1 folder" not in (line := proc.stderr.readline()):
            assert line, "the watcher exited before watching"
        index = api_engine.index(name)
        (library / "newlink").symlink_to(private)  # a folder link: the polling snapshot walks into it
        (library / "linked.png").symlink_to(private / "moon.png")  # a file link: both observers report it
        shutil.copy(samples / "rocket.jpg", library / "fresh.jpg")  # last: once it is in, the links were handled
        _wait_for(lambda: str(library / "fresh.jpg") in _paths(index))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        batches = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _paths(index) == {str(library / "coffee.png"), str(library / "fresh.jpg")}
    skipped = {s["path"]: s["reason"] for batch in batches for s in batch["skipped"]}
    assert "symbolic link" in skipped[str(library / "linked.png")]


def test_watcher_paths_are_never_explicit_roots(engine, index_name, samples, private, tmp_path):
    """What a watcher hands over is checked like a file the scan met: inside a watched folder, no link on the way."""
    library = tmp_path / "library"
    copy_some(samples, library, ["coffee.png"])
    idx = engine.index(index_name, create=True)
    assert idx.add_paths([library]).added == 1
    (library / "newlink").symlink_to(private)
    (library / "linked.png").symlink_to(private / "moon.png")
    changed = {str(library / "newlink" / "astronaut.png"), str(library / "newlink" / "moon.png"),
               str(library / "linked.png"), str(private / "astronaut.png"),
               str(library / "sub" / ".." / ".." / "elsewhere" / "private" / "moon.png")}
    report = idx.apply_folder_changes(changed, set(), [], roots=[library])
    assert report.added == 0 and not report.failed
    assert set(dict(report.skipped)) == {os.path.normpath(p) for p in changed}
    assert _paths(idx) == {str(library / "coffee.png")}
    # the same links are followed when asked: the scan's rule, not a ban on links
    followed = idx.apply_folder_changes(changed, set(), [], roots=[library], follow_symlinks=True)
    assert followed.added == 3 and sorted(dict(followed.skipped)) == [str(private / "astronaut.png"),
                                                                      str(private / "moon.png")]


def test_a_watched_move_through_a_link_drops_the_row(engine, index_name, samples, private, tmp_path):
    library = tmp_path / "library"
    copy_some(samples, library, ["coffee.png", "rocket.jpg"])
    idx = engine.index(index_name, create=True)
    idx.add_paths([library])
    (library / "newlink").symlink_to(private)
    os.rename(library / "rocket.jpg", library / "newlink" / "rocket.jpg")  # the file left through the link
    report = idx.apply_folder_changes(set(), set(), [(str(library / "rocket.jpg"),
                                                      str(library / "newlink" / "rocket.jpg"))], roots=[library])
    assert report.moved == 0 and report.removed == 1
    assert _paths(idx) == {str(library / "coffee.png")}


def test_the_polling_watcher_does_not_walk_into_folder_links(samples, private, tmp_path):
    from pixsearch.ingest.watch import FolderWatcher

    library = tmp_path / "library"
    library.mkdir()
    batches: queue.Queue = queue.Queue()
    with FolderWatcher([library], lambda changed, deleted, moved: batches.put(changed), debounce_s=0.2,
                       polling=True):
        (library / "newlink").symlink_to(private)
        (library / "loop").symlink_to(library)  # a cycle
        shutil.copy(samples / "coffee.png", library / "coffee.png")  # last: its batch holds what came before
        seen: set[str] = set()
        while str(library / "coffee.png") not in seen:
            seen |= batches.get(timeout=30)
    assert seen == {str(library / "coffee.png")}


def test_a_normal_run_removes_rows_behind_links(engine, index_name, samples, private, tmp_path):
    """Rows an earlier watcher (or --follow-symlinks run) left behind links go on the next run that skips links."""
    library = tmp_path / "library"
    copy_some(samples, library, ["coffee.png"])
    (library / "newlink").symlink_to(private)
    (library / "linked.png").symlink_to(private / "moon.png")
    idx = engine.index(index_name, create=True)
    assert idx.add_paths([library], follow_symlinks=True).added == 4
    report = idx.add_paths([library])
    assert report.removed == 3 and report.unchanged == 1
    assert _paths(idx) == {str(library / "coffee.png")}


# -- item 5: regions and reindex open stored paths through the thumbnails' check --------------------------------------
def _library_with_a_swapped_photo(samples, private, tmp_path) -> tuple[Path, list[Path]]:
    library = tmp_path / "library"
    copy_some(samples, library, ["coffee.png", "rocket.jpg", "cat-chelsea.png"])
    return library, [library / "rocket.jpg", library / "cat-chelsea.png"]


def _swap_for_links(swapped: list[Path], private: Path) -> None:
    """Replace indexed photos by links: one to a photo outside the library, one to a file no photo is."""
    swapped[0].unlink()
    swapped[0].symlink_to(private / "moon.png")
    swapped[1].unlink()
    swapped[1].symlink_to("/etc/passwd")


def test_regions_do_not_follow_a_photo_replaced_by_a_link(engine, index_name, samples, private, tmp_path):
    library, swapped = _library_with_a_swapped_photo(samples, private, tmp_path)
    idx = engine.index(index_name, create=True)
    idx.add_paths([library])
    _swap_for_links(swapped, private)
    report = idx.add_regions("grid-coarse")
    assert report.photos == 1 and sorted(p for p, _ in report.failed) == sorted(map(str, swapped))
    assert not [reason for _, reason in report.failed if "not an image" in reason]  # /etc/passwd was not read


def test_reindex_does_not_follow_a_photo_replaced_by_a_link(home, embedder, samples, private, tmp_path):
    from pixsearch.config import Settings
    from pixsearch.service import Engine
    from tiny_models import build_tiny_clip

    tiny_clip = build_tiny_clip(tmp_path / "tiny-clip", image_size=32)
    library, swapped = _library_with_a_swapped_photo(samples, private, tmp_path)
    name = _name("reindex-links")
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        engine.index(name, create=True).add_paths([library])
        _swap_for_links(swapped, private)
        report = engine.index(name).reindex(tiny_clip.name)
    assert report.embedded == 1 and sorted(p for p, _ in report.failed) == sorted(map(str, swapped))
    assert not [reason for _, reason in report.failed if "not an image" in reason]  # /etc/passwd was not read


# -- item 7: one spelling per file ------------------------------------------------------------------------------------
def test_one_folder_spelled_two_ways_is_indexed_once(engine, index_name, tmp_path):
    (tmp_path / "a" / "home").mkdir(parents=True)
    noise_images(tmp_path / "a" / "p", 4, 24, 24, seed=19)
    idx = engine.index(index_name, create=True)
    first = idx.add_paths([tmp_path / "a" / "home" / ".." / "p"])
    second = idx.add_paths([Path(f"{tmp_path}/a/./p/")])
    assert first.added == 4 and second.added == 0 and second.unchanged == 4
    assert idx.count() == 4
    assert _paths(idx) == {str(tmp_path / "a" / "p" / f"p{i:03d}.png") for i in range(4)}
    assert idx.duplicates() == []


def test_a_box_list_names_a_photo_by_any_spelling_of_its_path(engine, index_name, samples, tmp_path):
    library = tmp_path / "library"
    for folder in ("a", "b"):
        copy_some(samples, library / folder, ["coffee.png"])  # one name in two folders: only the path tells
    idx = engine.index(index_name, create=True)
    idx.add_paths([library])
    keys = {Path(h.document["path"]).parent.name: h.id for h in idx.query(SearchRequest(top=10))}
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text("".join(json.dumps({"path": path, "x0": 0, "y0": 0, "x1": 40, "y1": 40, "label": label}) + "\n"
                             for path, label in ((f"{library}/b/../a/coffee.png", "a"),
                                                 (f"{library}/a/./../b/coffee.png", "b"))))
    report = idx.add_regions(boxes)
    assert report.photos == 2 and not report.unmatched
    for folder in ("a", "b"):
        hits = idx.query(SearchRequest(text="coffee", top=5, regions="regions", filter=f"label eq '{folder}'"))
        assert [h.id.split(":")[0] for h in hits] == [keys[folder]]


def _legacy_id(path: str) -> str:
    """The key an older release gave a path: a hash of the path exactly as given."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def _respell_as_an_older_release_did(engine, idx, spelled_folder: str) -> None:
    """Give every row the path `spelled_folder`/its file name, keyed by that spelling, as older releases stored
    `pixsearch index /a/home/../p`: rows, vectors and all, only the path and key differ."""
    states = idx.store.stored_states(list(idx.get([h.id for h in idx.query(SearchRequest(top=100))], vectors=False)))
    moves = []
    for key, state in states.items():
        spelled = f"{spelled_folder}/{os.path.basename(state.path)}"
        moves.append((key, PhotoLocation(_legacy_id(spelled), spelled, spelled_folder, os.path.basename(spelled),
                                         state.size_bytes, state.mtime_ns, None)))
    idx.store.move_photos(moves)


def test_rows_stored_under_two_spellings_are_folded_on_the_next_run(engine, index_name, tmp_path):
    (tmp_path / "a" / "home").mkdir(parents=True)
    folder = tmp_path / "a" / "p"
    noise_images(folder, 4, 24, 24, seed=7)
    idx = engine.index(index_name, create=True)
    idx.add_paths([folder])
    _respell_as_an_older_release_did(engine, idx, f"{tmp_path}/a/home/../p")
    # ... and the same files indexed again under their plain spelling by a run that does not prune
    assert idx.add_paths([folder], prune=False).added == 4
    assert idx.count() == 8
    report = idx.add_paths([folder])
    assert idx.count() == 4 and report.removed == 4 and report.added == 0 and report.unchanged == 4
    assert _paths(idx) == {str(folder / f"p{i:03d}.png") for i in range(4)}
    assert idx.duplicates() == []


def test_a_lone_row_under_another_spelling_takes_the_plain_one(engine, index_name, tmp_path):
    (tmp_path / "a" / "home").mkdir(parents=True)
    folder = tmp_path / "a" / "p"
    noise_images(folder, 2, 24, 24, seed=8)
    idx = engine.index(index_name, create=True)
    idx.add_paths([folder])
    _respell_as_an_older_release_did(engine, idx, f"{tmp_path}/a/home/../p")
    report = idx.add_paths([folder])
    assert report.added == 0 and report.updated == 0 and report.unchanged == 2  # nothing embedded again
    assert idx.count() == 2 and _paths(idx) == {str(folder / f"p{i:03d}.png") for i in range(2)}

"""Incremental, failure-tolerant ingest against the real embedded Postgres and the real offline models."""
from __future__ import annotations

import os

import numpy as np
import pytest

from helpers import broken_files, copy_some, noise_images
from pixsearch.ingest.scan import photo_id
from pixsearch.store import PhotoRecord

SOME = ["cat-chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "imagenet-04-949.jpg"]


def test_rerun_on_the_same_folder_adds_nothing(engine, index_name, samples, tmp_path):
    copy_some(samples, tmp_path, SOME)
    idx = engine.index(index_name, create=True)
    first = idx.add_paths([tmp_path])
    assert (first.added, first.updated, first.failed) == (len(SOME), 0, [])
    second = idx.add_paths([tmp_path])
    assert (second.added, second.updated, second.unchanged, second.removed) == (0, 0, len(SOME), 0)
    assert second.stage_seconds["embed"] == 0.0
    assert idx.count() == len(SOME)


def test_broken_files_are_reported_and_skipped_and_nothing_indexed_is_lost(engine, index_name, samples, tmp_path):
    copy_some(samples, tmp_path, SOME)
    idx = engine.index(index_name, create=True)
    idx.add_paths([tmp_path])
    broken = broken_files(tmp_path / "broken")
    # An indexed photo replaced by garbage must keep its old row rather than vanish.
    (tmp_path / "coffee.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    report = idx.add_paths([tmp_path])
    reasons = dict(report.failed)
    assert set(reasons) == {str(p) for p in broken.values()} | {str(tmp_path / "coffee.png")}
    assert "truncated" in reasons[str(broken["truncated"])]
    assert "not an image" in reasons[str(broken["text"])]
    assert "empty" in reasons[str(broken["empty"])]
    assert idx.count() == len(SOME)
    hits = idx.search("a cup of coffee", k=1)
    assert hits[0].path.endswith("coffee.png")


def test_changed_touched_and_deleted_files(engine, index_name, samples, tmp_path):
    paths = copy_some(samples, tmp_path, SOME)
    idx = engine.index(index_name, create=True)
    idx.add_paths([tmp_path])
    cat, coffee, rocket = paths[0], paths[1], paths[2]
    # touched: new mtime, same bytes -> hash matches, no re-embedding
    st = os.stat(cat)
    os.utime(cat, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    # changed: other content under the same name
    coffee.write_bytes((samples / "imagenet-16-251.jpg").read_bytes())
    rocket.unlink()
    report = idx.add_paths([tmp_path])
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 1, 1, len(SOME) - 2)
    assert idx.count() == len(SOME) - 1
    # the touched file now matches on size + mtime, so a third run reads nothing
    third = idx.add_paths([tmp_path])
    assert (third.updated, third.unchanged) == (0, len(SOME) - 1)
    assert idx.search("a dalmatian dog", k=1)[0].path == str(coffee)


def test_touched_photos_keep_their_rows_with_the_new_times(engine, index_name, samples, tmp_path):
    paths = copy_some(samples, tmp_path, SOME)
    idx = engine.index(index_name, create=True)
    idx.add_paths([tmp_path])
    for path in paths[:3]:
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    report = idx.add_paths([tmp_path])
    assert (report.added, report.updated, report.unchanged) == (0, 0, len(SOME))
    stored = idx.store.stored_states([photo_id(str(p)) for p in paths])
    assert [stored[photo_id(str(p))].mtime_ns for p in paths] == [os.stat(p).st_mtime_ns for p in paths]


def test_two_copies_of_a_moved_photo_one_takes_its_row_the_other_is_new(engine, index_name, samples, tmp_path):
    """The photo's row is claimed once, even when the copies are found in different batches (engine: 8 a batch)."""
    original = copy_some(samples, tmp_path, ["coffee.png"])[0]
    idx = engine.index(index_name, create=True)
    assert idx.add_paths([tmp_path]).added == 1
    noise_images(tmp_path, 9, 32, 32, seed=3, name="m{:02d}.png")  # sorted between the two copies
    (tmp_path / "z-copy.png").write_bytes(original.read_bytes())
    original.rename(tmp_path / "a-moved.png")
    report = idx.add_paths([tmp_path])
    assert (report.moved, report.added, report.removed, report.failed) == (1, 10, 0, [])
    assert idx.count() == 11


def test_a_batch_is_written_all_or_nothing(engine, index_name, samples, tmp_path):
    copy_some(samples, tmp_path, SOME[:2])
    idx = engine.index(index_name, create=True)
    idx.add_paths([tmp_path])
    dims = {vf.name: vf.dims for vf in idx.spec.vector_fields}

    def record(i: int, bad: bool = False) -> PhotoRecord:
        vectors = {name: np.ones(d + (1 if bad else 0), dtype=np.float32) for name, d in dims.items()}
        return PhotoRecord(id=f"r{i}", path=f"/nowhere/{i}.jpg", folder="/nowhere", filename=f"{i}.jpg",
                           content_hash="x", size_bytes=1, mtime_ns=1, vectors=vectors)

    with pytest.raises(ValueError, match="dimensions"):
        idx.store.write_photos([record(1), record(2), record(3, bad=True)])
    assert idx.count() == 2


def test_missing_path_is_reported(engine, index_name, tmp_path):
    report = engine.index(index_name, create=True).add_paths([tmp_path / "nope"])
    assert report.failed == [(str(tmp_path / "nope"), "no such file or folder")]

"""The image stage (ingest/stage.py) on its own: real files, the real offline model, a real thread pool.

Its error rules (a bad item is that item's failure, the rest are embedded, order kept, bugs are raised), its bounded
read-ahead, its sift step (items it drops are not decoded) and its batches (closed at batch_size items or inputs).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pixsearch.ingest.decode import decode_bytes, read_file
from pixsearch.ingest.stage import ImageStage, PhotoNotFound, StageOptions


class CountingEmbedder:
    """The real embedder, with the number of images of each embed_images call recorded."""

    def __init__(self, embedder):
        self.inner, self.calls = embedder, []

    def prepare_image(self, image):
        return self.inner.prepare_image(image)

    def embed_images(self, images):
        self.calls.append(len(images))
        return self.inner.embed_images(images)


def read_existing(path: Path) -> bytes:
    """Like service/roots.read_stored_photo: a missing file is PhotoNotFound, the rest read_file's rules."""
    if not path.exists():
        raise PhotoNotFound("the photo's file is missing")
    return read_file(str(path))


@pytest.fixture(scope="module")
def photos(samples) -> list[Path]:
    return sorted(samples.glob("*.jpg"))[:5] + sorted(samples.glob("*.png"))[:2]


def test_bad_items_fail_alone_with_their_reason_and_the_rest_are_embedded_in_order(embedder, photos, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(photos[0].read_bytes()[:300])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("just some text\n" * 50)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    items = [photos[0], corrupt, photos[1], tmp_path / "missing.jpg", photos[2], not_image, empty] + photos[3:]
    counting = CountingEmbedder(embedder)
    stage = ImageStage(counting, StageOptions(batch_size=3, workers=2))

    results = [r for batch in stage.run(items, read_existing) for r in batch]

    assert [r.item for r in results] == items
    reasons = {r.item.name: r.error for r in results if r.error is not None}
    assert set(reasons) == {"corrupt.jpg", "missing.jpg", "notes.jpg", "empty.jpg"}
    assert reasons["corrupt.jpg"].startswith("corrupt or truncated image")
    assert reasons["missing.jpg"] == "the photo's file is missing"
    assert reasons["notes.jpg"].startswith("not an image, or an unsupported image format")
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    good = [r for r in results if r.error is None]
    assert [r.item for r in good] == photos
    assert all(r.embeddings is None and r.decoded is None for r in results if r.error is not None)
    assert sum(counting.calls) == len(photos) and max(counting.calls) <= 3
    for result in good:
        decoded = decode_bytes(result.item.read_bytes())
        expected = embedder.embed_images([embedder.prepare_image(decoded.image)])
        for space, vectors in result.embeddings.vectors.items():
            assert vectors.shape[0] == 1
            np.testing.assert_allclose(vectors[0], expected.vectors[space][0], atol=1e-5)
        assert result.decoded.image is None and result.decoded.width == decoded.width  # facts kept, pixels gone


def test_anything_but_a_bad_item_stops_the_run(embedder, photos):
    def read(path: Path) -> bytes:
        if path == photos[2]:
            raise RuntimeError("a bug in the reader")
        return path.read_bytes()

    stage = ImageStage(embedder, StageOptions(batch_size=2, workers=2))
    with pytest.raises(RuntimeError, match="a bug in the reader"):
        for _ in stage.run(photos, read):
            pass


def test_read_ahead_is_bounded_while_the_consumer_is_slow(embedder, photos):
    """However slow the consumer, no more than in_flight_limit items are between their read and their batch."""
    items = [photos[i % len(photos)] for i in range(60)]
    options = StageOptions(batch_size=2, workers=2, window=2)
    lock = threading.Lock()
    counts = {"started": 0, "handed": 0, "most": 0}

    def slow_read(path: Path) -> bytes:
        with lock:
            counts["started"] += 1
            counts["most"] = max(counts["most"], counts["started"] - counts["handed"])
        time.sleep(0.005)  # a slow disk
        return path.read_bytes()

    for batch in ImageStage(embedder, options).run(items, slow_read):
        time.sleep(0.05)  # a slower consumer: an unbounded stage would read everything meanwhile
        with lock:
            counts["handed"] += len(batch.results)

    assert counts["started"] == len(items) and counts["handed"] == len(items)
    assert options.in_flight_limit < len(items) / 4
    assert counts["most"] <= options.in_flight_limit


def test_items_the_sift_drops_pass_through_undecoded(embedder, photos):
    counting = CountingEmbedder(embedder)
    sifted: list[list[Path]] = []

    def keep_pngs(batch: list[Path]) -> list[bool]:
        sifted.append(batch)
        return [p.suffix == ".png" for p in batch]

    stage = ImageStage(counting, StageOptions(batch_size=3))
    results = [r for batch in stage.run(photos, lambda p: p.read_bytes(), sift=keep_pngs) for r in batch]

    assert [r.item for r in results] == photos and all(r.error is None for r in results)
    assert [r.item.suffix for r in results if r.embeddings is not None] == [".png", ".png"]
    assert all(r.decoded is None for r in results if r.item.suffix == ".jpg")
    assert sum(counting.calls) == 2 and all(len(b) <= 3 for b in sifted)


def test_several_views_of_an_item_get_their_rows_and_a_batch_closes_at_batch_size_inputs(embedder, photos):
    counting = CountingEmbedder(embedder)

    def quarters(path, decoded):
        w, h = decoded.image.size
        return [decoded.image.crop((x, y, x + w // 2, y + h // 2)) for x in (0, w // 2) for y in (0, h // 2)]

    stage = ImageStage(counting, StageOptions(batch_size=6))
    batches = list(stage.run(photos[:3], lambda p: p.read_bytes(), views=quarters))

    assert [len(b.results) for b in batches] == [2, 1]  # 8 inputs close the first batch, not 3 items
    assert counting.calls == [8, 4]
    first = batches[0].results[0]
    decoded = decode_bytes(photos[0].read_bytes())
    expected = embedder.embed_images([embedder.prepare_image(v) for v in quarters(photos[0], decoded)])
    for space, vectors in first.embeddings.vectors.items():
        np.testing.assert_allclose(vectors, expected.vectors[space], atol=1e-5)

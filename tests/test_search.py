"""Search quality and mechanics on the sample photos: text -> photo, photo -> photo, EXPLAIN, errors."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import altered_copy
from pixsearch.service import ModelMismatchError, Query
from pixsearch.store import PHOTO_FIELDS, VectorField, create_index


@pytest.fixture
def idx(engine, sample_index):
    return engine.index(sample_index)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a photo of a cat", "cat-chelsea.png"),
        ("a cup of coffee", "coffee.png"),
        ("strawberries", "imagenet-04-949.jpg"),
    ],
)
def test_text_finds_the_right_photo_first(idx, text, expected):
    hits = idx.search(text, k=5)
    assert hits[0].path.endswith(expected), [(h.path, round(h.score, 3)) for h in hits]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


@pytest.mark.parametrize("name", ["cat-chelsea.png", "rocket.jpg", "china-temple.jpg", "imagenet-09-455.jpg"])
def test_an_altered_copy_finds_its_original_first(idx, samples, tmp_path, name):
    query = altered_copy(samples / name, tmp_path / "query.jpg")
    hits = idx.search(Query(image=query), k=3)
    assert hits[0].path == str(samples / name)
    assert hits[0].score > hits[1].score


def test_hits_carry_id_path_score_and_tags(idx):
    hit = idx.search("a photo of a cat", k=1)[0]
    assert len(hit.id) == 16 and hit.path.endswith("cat-chelsea.png")
    assert 0 < hit.score <= 1 and hit.tags
    assert set(hit.to_json()) >= {"id", "path", "score"}


def test_k_bounds_and_empty_query_are_errors(idx):
    with pytest.raises(ValueError, match="empty query"):
        idx.search("   ")
    with pytest.raises(ValueError, match="k must be"):
        idx.search("cat", k=0)
    with pytest.raises(ValueError, match="dimensions"):
        idx.search_vector(np.ones(7, dtype=np.float32), field="semantic")


def test_a_corrupt_query_image_is_a_clear_error(idx, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match="not an image"):
        idx.search(Query(image=bad))


def test_querying_an_index_built_by_another_model_is_refused(engine, index_name):
    create_index(engine.db, index_name, [VectorField("semantic", 384, "some-other-model"),
                                         VectorField("image", 1280, "efficientnet-lite0")], PHOTO_FIELDS, kind="photos")
    with pytest.raises(ModelMismatchError, match="some-other-model"):
        engine.index(index_name).search("a cat")


def test_explain_shows_the_hnsw_index_is_used(engine, index_name):
    """With enough rows that a scan is dear, the planner must pick the HNSW index for ORDER BY v <=> q LIMIT k."""
    idx = engine.create_index(index_name, [VectorField("semantic", 32)])
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3000, 32)).astype(np.float32)
    idx.add_vectors([f"p{i}" for i in range(3000)], vectors)
    with engine.db.connection() as conn:
        conn.execute("ANALYZE " + idx.spec.table_name)
    plan = idx.explain(vector=rng.normal(size=32), k=10)
    assert f"Index Scan using {idx.spec.table_name}_semantic_hnsw" in plan, plan
    assert idx.search_vector(vectors[42], 5)[0].id == "p42"

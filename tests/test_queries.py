"""Queries people actually ask: query kinds and combinations, filters, hybrid RRF, cutoffs, sorting, paging, facets."""
from __future__ import annotations

import io
import os
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from helpers import altered_copy, copy_some
from pixsearch.search.expressions import Term, parse_query
from pixsearch.search.odata import FilterSyntaxError
from pixsearch.search.ranking import Cutoff, reciprocal_rank_fusion
from pixsearch.search.request import SearchRequest, VectorQuery
from pixsearch.store import Field, FilterError, VectorField


@pytest.fixture
def idx(engine, sample_index):
    return engine.index(sample_index)


def names(hits) -> list[str]:
    return [h.path.rsplit("/", 1)[-1] for h in hits]


def photo_id(idx, samples, name: str) -> str:
    from pixsearch.ingest.scan import photo_id as make_id

    return make_id(str(samples / name))


# -- query kinds -------------------------------------------------------------------------------------------------------
def test_every_query_kind(idx, samples, tmp_path):
    cat_id = photo_id(idx, samples, "cat-chelsea.png")
    assert names(idx.query(SearchRequest(text="a photo of a cat", mode="vector", top=1))) == ["cat-chelsea.png"]
    copy = altered_copy(samples / "rocket.jpg", tmp_path / "q.jpg")
    assert names(idx.query(SearchRequest(image=copy, top=1))) == ["rocket.jpg"]
    assert names(idx.query(SearchRequest(image=copy.read_bytes(), top=1))) == ["rocket.jpg"]
    by_id = idx.query(SearchRequest(ids=[cat_id], top=2, mode="vector"))
    assert by_id[0].id == cat_id and by_id[0].score == pytest.approx(1.0, abs=1e-5)
    stored = idx.get([cat_id])[cat_id]["semantic"]
    by_vector = idx.query(SearchRequest(vector=stored, field="semantic", top=1))
    assert by_vector[0].id == cat_id
    assert idx.query(SearchRequest(text=f"id:{cat_id}", top=1))[0].id == cat_id


def test_more_like_this_searches_the_image_space(idx, samples):
    cat_id = photo_id(idx, samples, "cat-chelsea.png")
    field_name, vector = idx.resolve(parse_query(f"id:{cat_id}"))
    assert field_name == "image"
    np.testing.assert_allclose(vector, idx.get([cat_id])[cat_id]["image"], rtol=1e-5, atol=1e-6)


def test_no_query_lists_photos_newest_first_with_an_exact_total(engine, index_name, samples, tmp_path):
    files = copy_some(samples, tmp_path / "photos", ["coffee.png", "rocket.jpg", "cat-chelsea.png"])
    days = {"coffee.png": 3, "rocket.jpg": 1, "cat-chelsea.png": 2}  # days after 2020-01-01
    for f in files:
        stamp = datetime(2020, 1, 1 + days[f.name], tzinfo=timezone.utc).timestamp()
        os.utime(f, (stamp, stamp))
    idx = engine.index(index_name, create=True)
    idx.add_paths([tmp_path / "photos"])
    listed = idx.query(SearchRequest(top=2, facets=["taken_at,interval:day"]))
    assert listed.mode == "browse" and listed.total == 3
    assert names(listed) == ["coffee.png", "rocket.jpg"]  # no recorded date: the file's time stands in
    assert listed[0].document["taken_at"] == datetime(2020, 1, 4, tzinfo=timezone.utc)
    assert listed[0].document["taken_at_source"] == "file"
    assert len(listed.facets["taken_at"]) == 3
    [cat] = idx.query(SearchRequest(top=2, skip=2)).hits  # its XMP says when it was taken (no UTC offset given)
    assert cat.document["filename"] == "cat-chelsea.png" and cat.document["taken_at_source"] == "xmp-no-offset"
    assert cat.document["taken_at"] == datetime(2009, 2, 9, 9, 11, 30, tzinfo=timezone.utc)
    older = idx.query(SearchRequest(filter="taken_at lt 2020-01-04", sort=[("filename", False)]))
    assert names(older) == ["cat-chelsea.png", "rocket.jpg"] and older.total == 2


def test_vector_queries_are_fused_with_their_weights(idx, samples, tmp_path):
    rocket = altered_copy(samples / "rocket.jpg", tmp_path / "q.jpg")
    queries = [VectorQuery(text="a cat", weight=2.0), VectorQuery(image=rocket)]
    fused = idx.query(SearchRequest(vector_queries=queries, top=5))
    for hit in fused:  # weighted RRF: sum of weight / (60 + rank) over the lists that found the photo
        expected = sum({"vector_query_1": 2.0, "vector_query_2": 1.0}[name] / (60 + sub["rank"])
                       for name, sub in hit.subscores.items())
        assert hit.score == pytest.approx(expected)
    text_only = idx.query(SearchRequest(text="a cat", mode="vector", top=3))
    muted = [VectorQuery(text="a cat"), VectorQuery(image=rocket, weight=0.0)]
    assert names(idx.query(SearchRequest(vector_queries=muted, top=3))) == names(text_only)
    with_text = idx.query(SearchRequest(text="coffee", vector_queries=[VectorQuery(image=rocket)], top=3))
    assert with_text.mode == "hybrid" and {"vector", "keyword", "vector_query_1"} >= set(with_text[0].subscores)
    with pytest.raises(ValueError, match="keyword mode does not use vector queries"):
        idx.query(SearchRequest(text="coffee", mode="keyword", vector_queries=[VectorQuery(image=rocket)]))


def test_query_vectors_are_embedded_once_per_text_and_upload(engine, sample_index, embedder, samples, tmp_path):
    idx = engine.index(sample_index)
    cache = engine.query_vectors
    upload = altered_copy(samples / "rocket.jpg", tmp_path / "q.jpg").read_bytes()
    pages = [idx.query(SearchRequest(text="a red car at night", mode="vector", top=4, skip=s)) for s in (0, 4)]
    assert (cache.misses, cache.hits) == (1, 1)
    first = [idx.query(SearchRequest(image=bytes(upload), top=4, skip=s)) for s in (0, 4)]
    assert (cache.misses, cache.hits) == (2, 2)
    assert [h.id for h in first[0]] != [h.id for h in first[1]] and [h.id for h in pages[0]] != [h.id for h in pages[1]]
    _, cached = idx.resolve(parse_query('"a red car at night"'))
    np.testing.assert_allclose(cached, embedder.embed_texts(["a red car at night"])[0], rtol=1e-5, atol=1e-6)
    _, cached_image = idx.resolve([Term("image", upload)])
    fresh = embedder.embed_images([Image.open(io.BytesIO(upload))]).vectors["image"][0]
    np.testing.assert_allclose(cached_image, fresh / np.linalg.norm(fresh), rtol=1e-4, atol=1e-5)


def test_ids_search_uses_the_mean_of_their_vectors(idx, samples):
    ids = [photo_id(idx, samples, n) for n in ("cat-chelsea.png", "imagenet-16-251.jpg")]
    field_name, vector = idx.resolve(parse_query("ids:" + ",".join(ids)))
    stored = idx.get(ids)
    expected = np.mean([stored[i][field_name] for i in ids], axis=0)
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)


def test_combination_arithmetic_matches_numpy(idx, embedder):
    terms = parse_query('2:"red car" + "night" - "people"')
    assert [(t.value, t.weight) for t in terms] == [("red car", 2.0), ("night", 1.0), ("people", -1.0)]
    field_name, vector = idx.resolve(terms)
    e = embedder.embed_texts(["red car", "night", "people"])
    expected = 2 * e[0] + e[1] - e[2]
    assert field_name == "semantic"
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)


def test_text_and_image_together_search_the_text_space(idx, samples, tmp_path):
    copy = altered_copy(samples / "cat-chelsea.png", tmp_path / "cat.jpg")
    result = idx.query(SearchRequest(text=f'"a cat" + image:{copy}', top=1))
    assert result.mode == "vector" and names(result) == ["cat-chelsea.png"]


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        ({"text": "  ", "mode": "vector"}, "needs a query"),
        ({"text": '"a" +'}, "expected a term"),
        ({"text": '"unterminated'}, "unterminated"),
        ({"text": '"a" "b"'}, "expected '\\+' or '-'"),
        ({"text": '- "snow"'}, "only subtracts"),
        ({"ids": ["no-such-id"]}, "unknown id"),
        ({"vector": np.ones(7), "field": "semantic"}, "384 dimensions, the query vector has 7"),
        ({"text": "cat", "top": 0}, "top must be"),
        ({"text": "cat", "skip": 995, "top": 10}, "at most 1000"),
        ({"text": "cat", "mode": "fuzzy"}, "unknown mode"),
        ({"text": "cat", "sort": [("tags", True)]}, "not sortable"),
    ],
)
def test_bad_queries_are_clear_errors(idx, request_kwargs, message):
    with pytest.raises(ValueError, match=message):
        idx.query(SearchRequest(**request_kwargs))


# -- filters -----------------------------------------------------------------------------------------------------------
def test_filters_on_photo_fields(idx, samples):
    pngs = idx.query(SearchRequest(text="a cat", filter="format eq 'PNG'", top=50, mode="vector"))
    assert pngs.hits and all(h.document["format"] == "PNG" for h in pngs)
    wide = idx.query(SearchRequest(text="a cat", filter="width ge 500 and not (format eq 'JPEG')", top=50))
    assert wide.hits and all(h.document["width"] >= 500 and h.document["format"] != "JPEG" for h in wide)
    inside = idx.query(SearchRequest(text="a cat", filter=f"startswith(folder, '{samples}')", top=50, mode="vector"))
    assert len(inside.hits) == len(list(samples.iterdir()))
    tagged = idx.query(SearchRequest(text="a dog", filter="tags/any(t: t eq 'dalmatian')", top=50, mode="vector"))
    assert names(tagged) == ["imagenet-16-251.jpg"]
    no_gps = idx.query(SearchRequest(text="a cat", filter="gps_lat eq null", top=5, mode="vector"))
    assert len(no_gps.hits) == 5
    either = idx.query(SearchRequest(text="x", filter="search.in(format, 'GIF,TIFF')", top=5, mode="vector"))
    assert either.hits == [] and either.reason == "fewer_matches"


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("width gt", FilterSyntaxError, "expected a value"),
        ("width == 3", FilterSyntaxError, "use 'eq'"),
        ("filename eq 'x'", FilterError, "not filterable"),
        ("width eq 'wide'", FilterError, "is int"),
        ("colour eq 'red'", FilterError, "no field 'colour'"),
        ("format eq 'PNG'; DROP TABLE px_samples; --", FilterSyntaxError, "position"),
    ],
)
def test_bad_filters_are_rejected(idx, text, error, message):
    with pytest.raises(error, match=message):
        idx.query(SearchRequest(text="cat", filter=text))


def test_injection_in_a_literal_is_just_a_value(idx):
    result = idx.query(SearchRequest(text="cat", filter="format eq 'PNG'' or 1=1 --'", mode="vector"))
    assert result.hits == []
    assert idx.count() > 0


# -- hybrid ------------------------------------------------------------------------------------------------------------
def test_hybrid_ranks_are_reciprocal_rank_fusion_of_both_lists(idx):
    text = "coffee cup"
    hybrid = idx.query(SearchRequest(text=text, mode="hybrid", top=10))
    vector = idx.query(SearchRequest(text=text, mode="vector", top=50))
    with idx.store.reader() as reader:
        keyword = reader.keyword_search(text, 50)
    assert keyword and keyword[0][0] == vector[0].id  # coffee.png leads both lists
    expected = {}
    for ranked in ([h.id for h in vector], [key for key, _ in keyword]):
        for rank, key in enumerate(ranked, 1):
            expected[key] = expected.get(key, 0.0) + 1 / (60 + rank)
    order = sorted(expected, key=lambda key: (-expected[key], key))[:10]
    assert [h.id for h in hybrid] == order
    for hit in hybrid:
        assert hit.score == pytest.approx(expected[hit.id])
        assert set(hit.subscores) <= {"vector", "keyword"} and hit.subscores
    top = hybrid[0]
    assert top.subscores["vector"]["rank"] == 1 and top.subscores["keyword"]["rank"] == 1
    assert hybrid.mode == "hybrid" and "subscores" in top.to_json()


def test_rrf_weights_and_ties():
    fused = reciprocal_rank_fusion({"a": [("x", 1.0), ("y", 0.5)], "b": [("y", 9.0)]}, {"b": 2.0})
    assert [f.id for f in fused] == ["y", "x"]
    assert fused[0].score == pytest.approx(1 / 62 + 2 / 61)
    tie = reciprocal_rank_fusion({"a": [("b", 1.0)], "c": [("a", 1.0)]})
    assert [f.id for f in tie] == ["a", "b"]  # equal fused scores: by id, so pages are stable


def test_keyword_mode_finds_partial_file_names(idx):
    result = idx.query(SearchRequest(text="imagenet-16", mode="keyword", top=3))
    assert names(result)[0] == "imagenet-16-251.jpg"


# -- cutoffs, sorting, paging ------------------------------------------------------------------------------------------
def test_gap_cutoff_keeps_only_the_clear_winner(idx):
    result = idx.query(SearchRequest(text="a photo of a cat", mode="vector", top=20, cutoff=Cutoff(gap=True)))
    assert names(result) == ["cat-chelsea.png"] and result.total == 1


def test_min_score_and_relative_cutoffs(idx):
    scores = [h.score for h in idx.query(SearchRequest(text="a dog", mode="vector", top=30))]
    kept = idx.query(SearchRequest(text="a dog", mode="vector", top=30, cutoff=Cutoff(min_score=scores[4])))
    assert len(kept.hits) == 5 and all(h.score >= scores[4] for h in kept)
    relative = idx.query(SearchRequest(text="a dog", mode="vector", top=30, cutoff=Cutoff(relative=0.9)))
    assert all(h.score >= 0.9 * scores[0] for h in relative) and len(relative.hits) >= 1


def test_cutoff_unit_cases():
    assert Cutoff(gap=True).apply([0.9, 0.88, 0.87, 0.3, 0.29]) == 3
    assert Cutoff(gap=True).apply([0.9, 0.85, 0.8, 0.75]) == 4  # no clear edge: keep all
    assert Cutoff(min_score=0.5, gap=True).apply([0.9, 0.4]) == 1
    assert Cutoff().apply([]) == 0


def test_pages_are_consistent(idx):
    full = [h.id for h in idx.query(SearchRequest(text="an animal", top=12))]
    pages = [h.id for skip in (0, 4, 8) for h in idx.query(SearchRequest(text="an animal", top=4, skip=skip))]
    assert pages == full and len(set(pages)) == 12


def test_relevant_results_sorted_by_date(engine, index_name):
    idx = engine.create_index(
        index_name,
        [VectorField("v", 3)],
        [Field("taken_at", "datetime", filterable=True, sortable=True, facetable=True),
         Field("tags", "string[]", filterable=True, facetable=True, searchable=True)],
    )
    vectors = np.array([[1, 0, 0], [0.99, 0.1, 0], [0.98, 0.15, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    dates = [datetime(y, 6, 1, tzinfo=timezone.utc) for y in (2019, 2023, 2021, 2024, 2022)]
    docs = [{"taken_at": d, "tags": [t]} for d, t in zip(dates, ["a", "a", "b", "b", "c"])]
    idx.add_vectors(["p0", "p1", "p2", "p3", "p4"], vectors, docs)
    request = SearchRequest(vector=[1, 0, 0], top=5, cutoff=Cutoff(gap=True), sort=[("taken_at", True)],
                            facets=["tags", "taken_at,interval:year"])
    result = idx.query(request)
    assert [h.id for h in result] == ["p1", "p2", "p0"]  # the three relevant ones, newest first
    assert result.facets["tags"] == [{"value": "a", "count": 2}, {"value": "b", "count": 1}]
    assert {f["value"] for f in result.facets["taken_at"]} == {"2019", "2021", "2023"}
    everything = idx.query(SearchRequest(vector=[1, 0, 0], top=5, facets=["tags,count:1"]))
    assert everything.facets["tags"] == [{"value": "a", "count": 2}]  # no cut: all filtered documents, top 1


def test_facets_count_the_filtered_set(idx):
    result = idx.query(SearchRequest(text="a cat", filter="format eq 'PNG'", facets=["format", "tags,count:3"]))
    assert result.facets["format"][0]["value"] == "PNG"
    assert len(result.facets["format"]) == 1 and len(result.facets["tags"]) <= 3
    all_png = idx.query(SearchRequest(text="a cat", filter="format eq 'PNG'", top=100, mode="vector"))
    assert result.facets["format"][0]["count"] == len(all_png.hits)
    with pytest.raises(ValueError, match="not facetable"):
        idx.query(SearchRequest(text="cat", facets=["width"]))


def test_search_flags_from_the_command_line(home, sample_index):
    result = run_cli("search", "a cat", "--index", sample_index, "--filter", "format eq 'PNG'", "--facet", "format",
                     "--mode", "vector", "--k", "3", "--json", home=home)
    assert result.returncode == 0, result.stderr
    import json

    body = json.loads(result.stdout)
    assert body["mode"] == "vector" and body["value"][0]["path"].endswith("cat-chelsea.png")
    assert body["facets"]["format"][0]["value"] == "PNG"
    weighted = run_cli("search", "coffee", "--index", sample_index, "--weight", "keyword=0", "--json", "--k", "3",
                       home=home)
    hits = json.loads(weighted.stdout)
    assert hits[0]["subscores"]["vector"]["rank"] == 1  # keyword weight 0: the order is the vector list's
    bad = run_cli("search", "a cat", "--index", sample_index, "--filter", "width gt", home=home)
    assert bad.returncode == 1 and "position 8" in bad.stderr and "Traceback" not in bad.stderr


def test_clearly_irrelevant_hits_can_be_hidden(idx):
    absent = idx.query(SearchRequest(text="a giraffe", mode="vector", top=10, hide_irrelevant=True))
    everything = idx.query(SearchRequest(text="a giraffe", mode="vector", top=10))
    assert len(everything) == 10 and absent.hidden >= 5 and len(absent) + absent.hidden == 10
    coffee = idx.query(SearchRequest(text="a cup of coffee", mode="vector", top=10, hide_irrelevant=True))
    assert names(coffee)[0] == "coffee.png" and coffee.hidden > 0
    # more like this is never cut: images and ids always have an answer
    like = idx.query(SearchRequest(ids=[coffee[0].id], top=10, hide_irrelevant=True))
    assert len(like) == 10 and like.hidden == 0

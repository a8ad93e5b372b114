"""Plan, then execute: a search request is checked against the limits and the index's definition alone — no database,
no model — so a bad request is refused before anything is embedded or queried."""
from __future__ import annotations

import numpy as np
import pytest

from pixsearch.search.context import QueryVectorCache, SearchContext
from pixsearch.search.execute import run
from pixsearch.search.plan import FUSION_DEPTH, KEYWORD, plan
from pixsearch.search.request import SearchRequest, VectorQuery
from pixsearch.store import Field, FilterError, IndexSpec, IndexStore, SchemaError, VectorField

PHOTOS = IndexSpec(
    name="album",
    table_name="pixsearch_album",
    vector_fields=(VectorField("semantic", 4, model_id="m/text"), VectorField("image", 4, model_id="m/image")),
    fields=(
        Field("tags", "string[]", filterable=True, facetable=True, searchable=True),
        Field("camera", "string", filterable=True),
        Field("taken_at", "datetime", filterable=True, sortable=True, facetable=True),
        Field("width", "int", facetable=True),
        Field("secret", "string", retrievable=False),
        Field("ocr_text", "string", keyword_list="ocr"),
    ),
    kind="photos",
    model="m",
)
VECTORS = IndexSpec(name="docs", table_name="pixsearch_docs", vector_fields=(VectorField("v", 4),),
                    fields=(Field("lang", "string", filterable=True),))


@pytest.mark.parametrize(
    "spec, request_kwargs, error, message",
    [
        (PHOTOS, {"text": "cat", "facets": ["camera"]}, SchemaError, "'camera' is not facetable"),
        (PHOTOS, {"text": "cat", "facets": ["lens"]}, SchemaError, "has no field 'lens'"),
        (PHOTOS, {"text": "cat", "facets": ["width,interval:year"]}, SchemaError, "applies to datetime fields"),
        (PHOTOS, {"text": "cat", "facets": ["tags,count:0"]}, ValueError, "unknown option"),
        (PHOTOS, {"text": "cat", "sort": [("camera", True)]}, SchemaError, "'camera' is not sortable"),
        (PHOTOS, {"sort": [("camera", False)]}, SchemaError, "'camera' is not sortable"),  # a listing too
        (PHOTOS, {"text": "cat", "select": ["secret"]}, ValueError, "'secret' is not retrievable"),
        (PHOTOS, {"text": "cat", "select": ["image"]}, ValueError, "cannot be selected"),
        (PHOTOS, {"text": "cat", "filter": "width gt 3"}, FilterError, "'width' is not filterable"),
        (PHOTOS, {"text": "cat", "filter": "camera eq 3"}, FilterError, "camera"),
        (PHOTOS, {"text": "cat", "field": "colour"}, SchemaError, "no vector field 'colour'"),
        (PHOTOS, {"text": "cat", "vector_queries": [VectorQuery(text="dog", field="colour")]}, SchemaError,
         "no vector field 'colour'"),
        (PHOTOS, {"text": "cat", "vector_queries": [VectorQuery()]}, ValueError, "vector query 1 is empty"),
        (PHOTOS, {"text": "cat", "regions": "images"}, ValueError, "has no regions"),
        (PHOTOS, {"image": "/etc/passwd"}, ValueError, "image:PATH query terms"),
        (VECTORS, {"text": "hello", "mode": "keyword"}, ValueError, "no searchable fields"),
    ],
)
def test_a_request_is_refused_from_the_index_definition_alone(spec, request_kwargs, error, message):
    with pytest.raises(error, match=message):
        plan(SearchRequest(**request_kwargs), spec, allow_file_terms=False)


def test_a_bad_request_is_refused_before_the_model_or_the_database_is_touched():
    """run() plans first: the model is never loaded and the store (which has no database at all) never read for a
    request the index cannot answer, however late in the search its mistake would have mattered."""

    def untouchable(*_args):
        raise AssertionError("the model was used for a request that was going to be refused")

    ctx = SearchContext(store=IndexStore(None, PHOTOS), model=untouchable, query_vectors=QueryVectorCache(),
                        open_image=untouchable)
    for bad in ({"facets": ["camera"]}, {"sort": [("width", True)]}, {"filter": "width gt 3"}):
        with pytest.raises(ValueError, match="width|camera"):
            run(ctx, SearchRequest(text="a cat", **bad))


def test_the_plan_of_a_hybrid_text_query():
    planned = plan(SearchRequest(text="a cat", top=5, skip=5, vector_queries=[VectorQuery(vector=np.ones(4),
                                                                                         field="image", weight=2)]),
                   PHOTOS)
    assert planned.kind == "search" and planned.mode == "hybrid" and planned.words == "a cat"
    assert [(item.name, item.field, item.depth) for item in planned.lists] == [
        ("vector", None, 10), ("vector_query_1", "image", 10)]
    assert planned.keyword_lists == (KEYWORD, "ocr") and planned.weights == {"vector_query_1": 2}
    assert planned.fuse and planned.depth_floor == FUSION_DEPTH and planned.window == 10


def test_text_on_an_index_without_a_model_is_keywords_or_a_clear_refusal():
    keyword_spec = IndexSpec(name="docs", table_name="pixsearch_docs", vector_fields=(VectorField("v", 4),),
                             fields=(Field("title", "string", searchable=True),))
    planned = plan(SearchRequest(text="red car"), keyword_spec)
    assert planned.mode == "keyword" and planned.lists == () and planned.keyword_lists == (KEYWORD,)
    assert not planned.fuse
    listing = plan(SearchRequest(filter="lang eq 'en'"), VECTORS)
    assert listing.kind == "browse" and listing.filter is not None

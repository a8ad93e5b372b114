"""Microsoft's own `azure-search-documents` client, unchanged, against a live pixsearch server on loopback."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

pytest.importorskip("azure.search.documents")

from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.search.documents import SearchClient
from azure.search.documents.indexes import SearchIndexClient
from azure.search.documents.indexes.models import (
    HnswAlgorithmConfiguration,
    HnswParameters,
    SearchableField,
    SearchField,
    SearchFieldDataType,
    SearchIndex,
    SimpleField,
    VectorSearch,
    VectorSearchProfile,
)
from azure.search.documents.models import VectorizableTextQuery, VectorizedQuery

from conftest import ADMIN_KEY as ADMIN, QUERY_KEY as QUERY  # the live server: conftest.base_url

N = 50
COLORS = ["red", "green", "blue", "black", "white"]


def vec(i: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(1000 + i).normal(size=3)]


def doc(i: int) -> dict:
    return {"id": f"k{i:02d}", "title": f"doc number {i}", "color": COLORS[i % 5], "n": i,
            "tags": ["even" if i % 2 == 0 else "odd"], "vector": vec(i)}


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def index_client(base_url):  # noqa: F811
    with SearchIndexClient(base_url, AzureKeyCredential(ADMIN)) as c:
        yield c


def search_client(base_url: str,  # noqa: F811
                  name: str, key: str = ADMIN) -> SearchClient:
    return SearchClient(base_url, name, AzureKeyCredential(key))


def make_index(name: str) -> SearchIndex:
    return SearchIndex(
        name=name,
        fields=[
            SimpleField(name="id", type=SearchFieldDataType.String, key=True),
            SearchableField(name="title", type=SearchFieldDataType.String),
            SimpleField(name="color", type=SearchFieldDataType.String, filterable=True, facetable=True),
            SimpleField(name="n", type=SearchFieldDataType.Int32, filterable=True, sortable=True),
            SimpleField(name="tags", type=SearchFieldDataType.Collection(SearchFieldDataType.String),
                        filterable=True, facetable=True),
            SearchField(name="vector", type=SearchFieldDataType.Collection(SearchFieldDataType.Single),
                        searchable=True, vector_search_dimensions=3, vector_search_profile_name="p"),
        ],
        vector_search=VectorSearch(
            profiles=[VectorSearchProfile(name="p", algorithm_configuration_name="h")],
            algorithms=[HnswAlgorithmConfiguration(
                name="h", parameters=HnswParameters(m=8, ef_construction=32, metric="cosine"))],
        ),
    )


@pytest.fixture(scope="module")
def azure_index(index_client, base_url):  # noqa: F811
    name = "az-" + uuid.uuid4().hex[:8]
    index_client.create_index(make_index(name))
    with search_client(base_url, name) as sc:
        results = sc.upload_documents([doc(i) for i in range(N)])
        assert all(r.succeeded for r in results) and len(results) == N
    yield name
    index_client.delete_index(name)


def test_index_lifecycle(index_client):
    name = "az-" + uuid.uuid4().hex[:8]
    created = index_client.create_index(make_index(name))
    assert created.name == name
    with pytest.raises(ResourceExistsError):
        index_client.create_index(make_index(name))
    got = index_client.get_index(name)
    fields = {f.name: f for f in got.fields}
    assert fields["id"].key and fields["color"].filterable and fields["color"].facetable and fields["n"].sortable
    assert fields["vector"].vector_search_dimensions == 3
    profile = got.vector_search.profiles[0]
    assert fields["vector"].vector_search_profile_name == profile.name
    algorithm = got.vector_search.algorithms[0]
    assert algorithm.name == profile.algorithm_configuration_name and algorithm.kind == "hnsw"
    assert (algorithm.parameters.m, algorithm.parameters.ef_construction, algorithm.parameters.metric) == (
        8, 32, "cosine")
    assert index_client.create_or_update_index(make_index(name)).name == name  # identical PUT: unchanged
    changed = make_index(name)
    changed.fields[3].sortable = False
    with pytest.raises(HttpResponseError) as err:
        index_client.create_or_update_index(changed)
    assert err.value.status_code == 409
    assert name in index_client.list_index_names()
    assert name in [i.name for i in index_client.list_indexes()]
    index_client.delete_index(name)
    with pytest.raises(ResourceNotFoundError):
        index_client.get_index(name)
    assert name not in index_client.list_index_names()


def test_unsupported_definitions_are_clear_errors(index_client):
    bad = make_index("az-bad-" + uuid.uuid4().hex[:6])
    bad.vector_search.algorithms[0].parameters.metric = "hamming"
    with pytest.raises(HttpResponseError) as err:
        index_client.create_index(bad)
    assert err.value.status_code == 501 and "hamming" in str(err.value)
    nokey = make_index("az-bad-" + uuid.uuid4().hex[:6])
    nokey.fields[0].key = False
    with pytest.raises(HttpResponseError) as err:
        index_client.create_index(nokey)
    assert err.value.status_code == 400 and "key field" in str(err.value)


def test_key_field_need_not_be_id(index_client, base_url):  # noqa: F811
    name = "az-" + uuid.uuid4().hex[:8]
    definition = make_index(name)
    definition.fields[0].name = "doc_id"
    index_client.create_index(definition)
    try:
        assert [f.name for f in index_client.get_index(name).fields if f.key] == ["doc_id"]
        with search_client(base_url, name) as sc:
            docs = [{**{k: v for k, v in doc(i).items() if k != "id"}, "doc_id": f"it's {i}"} for i in range(3)]
            assert all(r.succeeded for r in sc.upload_documents(docs))
            assert sc.get_document("it's 1")["n"] == 1  # OData quoting of the key
            hits = list(sc.search(search_text=None, vector_queries=[
                VectorizedQuery(vector=vec(2), k_nearest_neighbors=1, fields="vector")]))
            assert hits[0]["doc_id"] == "it's 2"
    finally:
        index_client.delete_index(name)


def test_documents_roundtrip(base_url, azure_index):  # noqa: F811
    with search_client(base_url, azure_index) as sc:
        assert sc.get_document_count() == N
        got = sc.get_document("k07")
        assert got["color"] == COLORS[2] and got["n"] == 7 and got["tags"] == ["odd"]
        assert np.allclose(got["vector"], vec(7), atol=1e-6)
        assert all(r.succeeded for r in sc.merge_documents([{"id": "k07", "color": "purple"}]))
        got = sc.get_document("k07")
        assert got["color"] == "purple" and got["n"] == 7  # merge kept the rest
        assert all(r.succeeded for r in sc.merge_or_upload_documents([{**doc(90), "id": "k90"}]))
        assert sc.get_document_count() == N + 1
        assert all(r.succeeded for r in sc.delete_documents([{"id": "k90"}, {"id": "k49"}]))
        assert sc.get_document_count() == N - 1
        with pytest.raises(ResourceNotFoundError):
            sc.get_document("k49")
        sc.upload_documents([doc(49)])  # restore for the search tests
        sc.merge_documents([{"id": "k07", "color": COLORS[2]}])
        assert sc.get_document_count() == N


def test_vector_search_nearest_first(base_url, azure_index):  # noqa: F811
    target = vec(13)
    expected = sorted(range(N), key=lambda i: -cosine(vec(i), target))[:3]
    with search_client(base_url, azure_index) as sc:
        hits = list(sc.search(search_text=None, vector_queries=[
            VectorizedQuery(vector=target, k_nearest_neighbors=3, fields="vector")]))
    assert [h["id"] for h in hits] == [f"k{i:02d}" for i in expected]
    assert hits[0]["id"] == "k13" and hits[0]["@search.score"] >= hits[1]["@search.score"] >= hits[2]["@search.score"]
    with search_client(base_url, azure_index) as sc:
        exact = list(sc.search(search_text=None, vector_queries=[
            VectorizedQuery(vector=target, k_nearest_neighbors=3, fields="vector", exhaustive=True)]))
        fused = list(sc.search(search_text=None, top=2, vector_queries=[
            VectorizedQuery(vector=target, k_nearest_neighbors=3, fields="vector", weight=3.0),
            VectorizedQuery(vector=vec(40), k_nearest_neighbors=3, fields="vector")]))
    assert [h["id"] for h in exact] == [f"k{i:02d}" for i in expected]
    assert fused[0]["id"] == "k13"  # the nearest to the query weighted 3 wins the fusion


def test_filter_facets_paging_select_orderby(base_url, azure_index):  # noqa: F811
    with search_client(base_url, azure_index) as sc:
        everything = sc.search(search_text="*", filter="color eq 'red'", order_by=["n desc"], top=3,
                               include_total_count=True)
        assert [h["n"] for h in everything] == sorted((i for i in range(N) if i % 5 == 0), reverse=True)[:3]
        assert everything.get_count() == len([i for i in range(N) if i % 5 == 0])
        results = sc.search(search_text=None, vector_queries=[
                                VectorizedQuery(vector=vec(0), k_nearest_neighbors=N, fields="vector")],
                            filter="color eq 'red' or color eq 'blue'", facets=["color", "tags"],
                            order_by=["n desc"], top=5, skip=2, select=["id", "n", "color"], include_total_count=True)
        hits = list(results)
        facets = results.get_facets()
        total = results.get_count()
    reds_blues = sorted((i for i in range(N) if i % 5 in (0, 2)), reverse=True)
    assert total == len(reds_blues)
    assert [h["n"] for h in hits] == reds_blues[2:7]
    assert all(set(h) - {"@search.score", "@search.reranker_score", "@search.highlights", "@search.captions",
                         "@search.document_debug_info", "@search.reranker_boosted_score"} == {"id", "n", "color"}
               for h in hits)
    assert {f["value"]: f["count"] for f in facets["color"]} == {"red": 10, "blue": 10}
    assert {f["value"]: f["count"] for f in facets["tags"]} == {"even": 10, "odd": 10}


def test_query_key_reads_but_cannot_write(base_url, azure_index):  # noqa: F811
    with search_client(base_url, azure_index, QUERY) as sc:
        hits = list(sc.search(search_text=None, top=2, vector_queries=[
            VectorizedQuery(vector=vec(3), k_nearest_neighbors=2, fields="vector")]))
        assert hits[0]["id"] == "k03"
        assert sc.get_document("k03")["n"] == 3 and sc.get_document_count() == N
        with pytest.raises(HttpResponseError) as err:
            sc.upload_documents([doc(77)])
        assert err.value.status_code == 403
    with SearchIndexClient(base_url, AzureKeyCredential(QUERY)) as ic, pytest.raises(HttpResponseError) as err:
        ic.get_index(azure_index)
    assert err.value.status_code == 403


def test_text_search_on_the_photo_index(base_url, sample_index):  # noqa: F811
    with search_client(base_url, sample_index, QUERY) as sc:
        hits = list(sc.search(search_text="a photo of a cat", top=3))
        assert hits[0]["path"].endswith("cat-chelsea.png"), [h["path"] for h in hits]
        hits = list(sc.search(search_text=None, top=3, vector_queries=[
            VectorizableTextQuery(text="a photo of a cat", k_nearest_neighbors=3, fields="semantic")]))
        assert hits[0]["path"].endswith("cat-chelsea.png"), [h["path"] for h in hits]


def test_unsupported_search_options_are_clear_errors(base_url, azure_index):  # noqa: F811
    vq = [VectorizedQuery(vector=vec(0), k_nearest_neighbors=3, fields="vector")]
    with search_client(base_url, azure_index) as sc:
        for kwargs in ({"search_text": "doc", "query_type": "semantic"}, {"search_text": "doc", "search_mode": "all"},
                       {"search_text": None, "vector_queries": vq, "highlight_fields": "title"},
                       {"search_text": None, "vector_queries": vq, "scoring_profile": "x"},
                       {"search_text": None, "vector_queries": [VectorizableTextQuery(text="cat", fields="vector")]},
                       {"search_text": None, "vector_queries": vq, "filter": "color eq"}):
            with pytest.raises(HttpResponseError) as err:
                list(sc.search(**kwargs))
            assert err.value.status_code in (400, 501), (kwargs, err.value)
            assert err.value.error is not None and err.value.error.message, kwargs

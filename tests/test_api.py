"""The REST API against a live uvicorn server on loopback, driven with httpx."""
from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from conftest import ADMIN_KEY, QUERY_KEY

ADMIN, QUERY = ADMIN_KEY, QUERY_KEY
DIMS = 4
N_DOCS = 24
LANGS = ["en", "de", "fr"]


def definition_body(dims: int = DIMS) -> dict:
    return {
        "fields": [
            {"name": "lang", "type": "string", "filterable": True, "facetable": True},
            {"name": "n", "type": "int", "filterable": True, "sortable": True},
            {"name": "tags", "type": "string[]", "filterable": True, "facetable": True},
            {"name": "taken", "type": "datetime", "filterable": True, "sortable": True},
        ],
        "vectorFields": [{"name": "v", "dimensions": dims, "metric": "cosine", "algorithm": "hnsw"}],
    }


def doc_vector(i: int) -> list[float]:
    rng = np.random.default_rng(i)
    return [float(x) for x in rng.normal(size=DIMS)]


def make_doc(i: int, **extra) -> dict:
    return {"@search.action": "upload", "id": f"d{i:02d}", "lang": LANGS[i % 3], "n": i,
            "tags": ["even" if i % 2 == 0 else "odd"], "taken": f"2021-01-{i + 1:02d}T00:00:00Z",
            "v": doc_vector(i), **extra}


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    assert "Traceback" not in response.text
    return body["error"]


@pytest.fixture(scope="module")
def vec_index(admin):
    """A precomputed-vector index with N_DOCS documents, shared by the read-only tests."""
    name = "api-" + uuid.uuid4().hex[:8]
    assert admin.put(f"/indexes/{name}", json=definition_body()).status_code == 201
    r = admin.post(f"/indexes/{name}/docs/index", json={"value": [make_doc(i) for i in range(N_DOCS)]})
    assert r.status_code == 200, r.text
    yield name
    admin.delete(f"/indexes/{name}")


# -- auth, health, errors ----------------------------------------------------------------------------------------------
def test_health_is_open(anon):
    r = anon.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_missing_or_wrong_key_is_401(anon, base_url, vec_index):
    assert _error(anon.get("/indexes"), 401)["message"] == "missing api-key header"
    assert _error(anon.post(f"/indexes/{vec_index}/docs/search", json={"search": "x"}), 401)
    assert _error(anon.get("/indexes", headers={"api-key": "nope"}), 401)["message"] == "invalid api-key"
    assert _error(anon.post(f"/indexes/{vec_index}/images/search", files={"image": ("a.png", b"x")}), 401)
    assert _error(anon.get("/thumbnails/some-key"), 401)
    assert _error(anon.get("/favicon.ico"), 401)  # only the page's own files are open
    assert anon.get("/").status_code == 200 and anon.get("/static/style.css").status_code == 200
    # auth comes before body parsing and before the route lookup
    assert _error(anon.post("/indexes/nope/docs/search", content=b"{bad"), 401)


def test_query_key_reads_documents_but_cannot_administer(query, admin, vec_index):
    assert query.post(f"/indexes/{vec_index}/docs/search", json={"vectorQueries": [
        {"kind": "vector", "vector": doc_vector(0), "fields": "v", "k": 3}]}).status_code == 200
    assert query.get(f"/indexes/{vec_index}/docs/d01").status_code == 200
    assert query.get(f"/indexes/{vec_index}/docs/$count").status_code == 200
    refused_write = {"value": [make_doc(9, id="d99")]}  # a valid document: only the key's role stops it
    for method, path, body in [
        ("GET", "/indexes", None),
        ("GET", f"/indexes/{vec_index}", None),
        ("GET", f"/indexes/{vec_index}/stats", None),
        ("PUT", "/indexes/other", definition_body()),
        ("DELETE", f"/indexes/{vec_index}", None),
        ("POST", f"/indexes/{vec_index}/docs/index", refused_write),
    ]:
        assert _error(query.request(method, path, json=body), 403)["message"] == "this operation needs an admin key"
    assert query.get(f"/indexes/{vec_index}/docs/d99").status_code == 404  # the write above did not happen
    assert admin.get("/indexes/other").status_code == 404 and admin.get(f"/indexes/{vec_index}").status_code == 200
    # ... though the same batch is stored when an admin key sends it (then removed: the index is shared)
    assert admin.post(f"/indexes/{vec_index}/docs/index", json=refused_write).status_code == 200
    assert query.get(f"/indexes/{vec_index}/docs/d99").json()["n"] == 9
    delete = {"value": [{"@search.action": "delete", "id": "d99"}]}
    removed = admin.post(f"/indexes/{vec_index}/docs/index", json=delete)
    assert removed.status_code == 200 and query.get(f"/indexes/{vec_index}/docs/d99").status_code == 404


def test_unknown_index_is_404(admin):
    for method, path, body in [
        ("GET", "/indexes/no-such", None),
        ("DELETE", "/indexes/no-such", None),
        ("GET", "/indexes/no-such/stats", None),
        ("GET", "/indexes/no-such/docs/$count", None),
        ("GET", "/indexes/no-such/docs/k", None),
        ("POST", "/indexes/no-such/docs/search", {"search": "x"}),
        ("POST", "/indexes/no-such/docs/index", {"value": []}),
    ]:
        err = _error(admin.request(method, path, json=body), 404)
        assert err["code"] == "IndexNotFound" and "no-such" in err["message"]
    assert _error(admin.post("/indexes/no-such/images/search", files={"image": ("a.png", b"x")}), 404)
    assert _error(admin.get("/nothing-here"), 404)


def test_bad_bodies_are_400(admin, vec_index):
    err = _error(admin.put("/indexes/bad-json", content=b'{"fields": [', headers={"content-type": "application/json"}),
                 400)
    assert "malformed JSON" in err["message"]
    body = definition_body()
    body["fields"][0]["filterable"] = "yes"  # no silent coercion
    assert "fields.0.filterable" in _error(admin.put("/indexes/bad-types", json=body), 400)["message"]
    body = definition_body()
    body["vectorFields"][0]["metric"] = "manhattan"
    assert "unknown metric" in _error(admin.put("/indexes/bad-metric", json=body), 400)["message"]
    assert "invalid index name" in _error(admin.put("/indexes/Bad_Name", json=definition_body()), 400)["message"]
    assert _error(admin.put("/indexes/x1", json={**definition_body(), "name": "x2"}), 400)
    assert _error(admin.put("/indexes/x1", json={**definition_body(), "surprise": 1}), 400)
    assert _error(admin.post(f"/indexes/{vec_index}/docs/search", json={"top": "ten", "search": "x"}), 400)
    assert _error(admin.post(f"/indexes/{vec_index}/docs/index", json={"docs": []}), 400)
    too_many = {"value": [{"id": f"m{i}", "@search.action": "delete"} for i in range(1001)]}
    assert "at most 1000" in _error(admin.post(f"/indexes/{vec_index}/docs/index", json=too_many), 400)["message"]
    vq = {"kind": "vector", "vector": doc_vector(0)}
    assert "at most 10" in _error(admin.post(f"/indexes/{vec_index}/docs/search", json={"vectorQueries": [vq] * 11}),
                                  400)["message"]
    names = [d["name"] for d in admin.get("/indexes").json()["value"]]
    assert not {"bad-json", "bad-types", "bad-metric", "x1", "x2"} & set(names)


def test_body_over_the_limit_is_413(admin, vec_index):
    r = admin.post(f"/indexes/{vec_index}/docs/index", content=b" " * (16 * 1024 * 1024 + 1),
                   headers={"content-type": "application/json"})
    assert _error(r, 413)["code"] == "RequestEntityTooLarge"

    def chunks():  # no content-length: counted while read
        for _ in range(17):
            yield b" " * (1024 * 1024)

    r = admin.post(f"/indexes/{vec_index}/docs/index", content=chunks(), headers={"content-type": "application/json"})
    assert _error(r, 413)


def test_unexpected_errors_are_a_generic_500(admin, api_engine, monkeypatch, caplog):
    def boom():
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(api_engine, "list_indexes", boom)
    err = _error(admin.get("/indexes"), 500)
    assert err == {"code": "InternalServerError", "message": "internal server error"}
    assert "secret" not in admin.get("/indexes").text
    assert "secret internal detail" in caplog.text  # logged server-side


# -- index definitions -------------------------------------------------------------------------------------------------
def test_index_lifecycle(admin):
    name = "api-life-" + uuid.uuid4().hex[:6]
    r = admin.put(f"/indexes/{name}", json=definition_body())
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == name and created["key"] == "id" and created["kind"] == "documents"
    assert created["fields"][0] == {"name": "lang", "type": "string", "filterable": True, "sortable": False,
                                    "facetable": True, "searchable": False, "retrievable": True}
    v = created["vectorFields"][0]
    assert (v["name"], v["dimensions"], v["metric"], v["storage"], v["algorithm"]) == ("v", 4, "cosine", "vector", "hnsw")
    assert v["parameters"] == {"m": 16, "ef_construction": 64} and v["modelId"] is None

    assert admin.put(f"/indexes/{name}", json=definition_body()).status_code == 200  # identical: fine
    assert admin.put(f"/indexes/{name}", json=created).status_code == 200  # a GET definition PUT back unchanged
    assert _error(admin.put(f"/indexes/{name}", json=definition_body(dims=8)), 409)["code"] == "IndexExists"

    assert admin.get(f"/indexes/{name}").json() == created
    assert name in [d["name"] for d in admin.get("/indexes").json()["value"]]
    stats = admin.get(f"/indexes/{name}/stats").json()
    assert stats["documentCount"] == 0 and stats["storageSize"] > 0 and stats["vectorIndexSize"] > 0
    assert stats["details"]["vector_fields"]["v"]["dims"] == 4

    r = admin.delete(f"/indexes/{name}")
    assert r.status_code == 204 and r.content == b""
    assert _error(admin.get(f"/indexes/{name}"), 404)
    assert _error(admin.delete(f"/indexes/{name}"), 404)


def test_photo_index_is_listed_with_its_model(admin, sample_index):
    d = admin.get(f"/indexes/{sample_index}").json()
    assert d["kind"] == "photos" and all(v["modelId"] for v in d["vectorFields"])
    assert admin.put(f"/indexes/{sample_index}", json=d).status_code == 200  # identical
    assert _error(admin.put("/indexes/api-photos-2", json={**d, "name": None}), 400)  # no model-built index via REST


# -- documents ---------------------------------------------------------------------------------------------------------
def test_document_batch_with_per_document_failures(admin):
    name = "api-docs-" + uuid.uuid4().hex[:6]
    admin.put(f"/indexes/{name}", json=definition_body())
    try:
        batch = [
            make_doc(0),
            make_doc(1, v=[1.0, 2.0]),  # wrong dimension
            make_doc(2, n="two"),  # wrong type
            make_doc(3, colour="red"),  # unknown field
            {"@search.action": "upload", "lang": "en"},  # no key
            make_doc(4, **{"@search.action": "explode"}),
            {"@search.action": "upload", "id": "novec", "lang": "de"},  # no vector: stored, not searchable
            make_doc(5, taken="yesterday"),
        ]
        r = admin.post(f"/indexes/{name}/docs/index", json={"value": batch})
        assert r.status_code == 207, r.text
        results = r.json()["value"]
        assert [(x["key"], x["status"], x["statusCode"]) for x in results] == [
            ("d00", True, 200), ("d01", False, 400), ("d02", False, 400), ("d03", False, 400), (None, False, 400),
            ("d04", False, 400), ("novec", True, 200), ("d05", False, 400)]
        assert "needs 4 dimensions, got 2" in results[1]["errorMessage"]
        assert "'n' (int)" in results[2]["errorMessage"]
        assert "unknown field 'colour'" in results[3]["errorMessage"]
        assert results[0]["errorMessage"] is None
        count = admin.get(f"/indexes/{name}/docs/$count")
        assert count.status_code == 200 and count.text == "2" and count.headers["content-type"].startswith("text/plain")

        doc = admin.get(f"/indexes/{name}/docs/d00").json()
        assert doc["id"] == "d00" and doc["lang"] == "en" and doc["n"] == 0 and doc["tags"] == ["even"]
        assert doc["taken"].startswith("2021-01-01T00:00:00") and np.allclose(doc["v"], doc_vector(0), atol=1e-6)
        assert admin.get(f"/indexes/{name}/docs/d00", params={"$select": "id,n"}).json() == {"id": "d00", "n": 0}
        assert _error(admin.get(f"/indexes/{name}/docs/d00", params={"$select": "nope"}), 400)
        assert _error(admin.get(f"/indexes/{name}/docs/missing"), 404)["code"] == "DocumentNotFound"

        r = admin.post(f"/indexes/{name}/docs/index", json={"value": [
            {"@search.action": "merge", "id": "d00", "n": 100},
            {"@search.action": "merge", "id": "ghost", "n": 1},
            {"@search.action": "mergeOrUpload", "id": "d07", "lang": "fr", "v": doc_vector(7)},
            {"@search.action": "delete", "id": "novec"},
            {"@search.action": "delete", "id": "never-existed"},
        ]})
        assert r.status_code == 207
        assert [(x["key"], x["statusCode"]) for x in r.json()["value"]] == [
            ("d00", 200), ("ghost", 404), ("d07", 200), ("novec", 200), ("never-existed", 200)]
        merged = admin.get(f"/indexes/{name}/docs/d00").json()
        assert merged["n"] == 100 and merged["lang"] == "en" and np.allclose(merged["v"], doc_vector(0), atol=1e-6)
        assert admin.get(f"/indexes/{name}/docs/d07").json()["lang"] == "fr"
        assert admin.get(f"/indexes/{name}/docs/$count").text == "2"
        # upload replaces the whole document
        r = admin.post(f"/indexes/{name}/docs/index", json={"value": [{"id": "d00", "v": doc_vector(0)}]})
        assert r.status_code == 200 and admin.get(f"/indexes/{name}/docs/d00").json()["n"] is None
    finally:
        admin.delete(f"/indexes/{name}")


# -- search ------------------------------------------------------------------------------------------------------------
def _vsearch(client, name, vector, **body):
    return client.post(f"/indexes/{name}/docs/search",
                       json={"vectorQueries": [{"kind": "vector", "vector": vector, "fields": "v"}], **body})


def test_vector_search_finds_the_document_itself_first(query, vec_index):
    r = _vsearch(query, vec_index, doc_vector(5), top=3)
    assert r.status_code == 200, r.text
    hits = r.json()["value"]
    assert len(hits) == 3 and hits[0]["id"] == "d05" and hits[0]["@search.score"] == pytest.approx(1, abs=1e-5)
    assert hits[0]["lang"] == "fr" and hits[0]["tags"] == ["odd"] and "v" not in hits[0]
    assert hits[0]["@search.score"] >= hits[1]["@search.score"] >= hits[2]["@search.score"]
    # k is the page size when top is not given; without k or top, Azure's 50 (here: all 24)
    r = query.post(f"/indexes/{vec_index}/docs/search",
                   json={"vectorQueries": [{"kind": "vector", "vector": doc_vector(5), "k": 2}]})
    assert [h["id"] for h in r.json()["value"]][:1] == ["d05"] and len(r.json()["value"]) == 2
    assert len(_vsearch(query, vec_index, doc_vector(5)).json()["value"]) == N_DOCS


def test_search_filter_select_orderby_count_facets(query, vec_index):
    r = _vsearch(query, vec_index, doc_vector(0), filter="lang eq 'de' and n lt 20", select="id,n",
                 orderby="n desc", count=True, facets=["tags", "lang,count:1"], top=3)
    assert r.json()["@odata.count"] == 3  # counts what was retrieved: max(k, skip + top)
    r = query.post(f"/indexes/{vec_index}/docs/search", json={
        "vectorQueries": [{"kind": "vector", "vector": doc_vector(0), "fields": "v", "k": N_DOCS}],
        "filter": "lang eq 'de' and n lt 20", "select": "id,n", "orderby": "n desc", "count": True,
        "facets": ["tags", "lang,count:1"], "top": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["@odata.count", "@search.facets", "value"]
    assert body["@odata.count"] == 7  # n in 1,4,...,19
    assert [h["id"] for h in body["value"]] == ["d19", "d16", "d13"]
    assert all(set(h) == {"@search.score", "id", "n"} for h in body["value"])
    assert body["@search.facets"]["tags"] == [{"value": "odd", "count": 4}, {"value": "even", "count": 3}]
    assert body["@search.facets"]["lang"] == [{"value": "de", "count": 7}]
    r = _vsearch(query, vec_index, doc_vector(0), filter="tags/any(t: t eq 'even') and taken ge 2021-01-20", top=10)
    assert sorted(h["id"] for h in r.json()["value"]) == ["d20", "d22"]


def test_bad_search_requests_are_400(query, vec_index):
    err = _error(_vsearch(query, vec_index, doc_vector(0), filter="lang == 'en'"), 400)
    assert err["code"] == "InvalidFilter" and err["position"] == 5 and "at position 5" in err["message"]
    assert "use 'eq'" in err["message"]
    err = _error(_vsearch(query, vec_index, doc_vector(0), filter="nope eq 1"), 400)
    assert err["code"] == "InvalidFilter" and "nope" in err["message"]
    assert _error(_vsearch(query, vec_index, [1.0, 2.0]), 400)["message"].endswith("the query vector has 2")
    assert "not sortable" in _error(_vsearch(query, vec_index, doc_vector(0), orderby="lang"), 400)["message"]
    assert "not facetable" in _error(_vsearch(query, vec_index, doc_vector(0), facets=["n"]), 400)["message"]
    assert _error(_vsearch(query, vec_index, doc_vector(0), top=0), 400)
    assert _error(_vsearch(query, vec_index, doc_vector(0), skip=-1), 400)
    assert _error(_vsearch(query, vec_index, doc_vector(0), select="nope"), 400)
    assert "no model" in _error(query.post(f"/indexes/{vec_index}/docs/search", json={"search": "cats"}), 400)["message"]
    assert "no model" in _error(_vsearch(query, vec_index, doc_vector(0), search="cats"), 400)["message"]
    search = f"/indexes/{vec_index}/docs/search"
    for vq, message in (({"kind": "id"}, "needs 'id'"), ({"kind": "id", "id": "nope"}, "unknown id"),
                        ({"kind": "image", "image": "%%%"}, "not valid base64"),
                        ({"kind": "image", "image": "aGVsbG8="}, "image"), ({"kind": "text"}, "needs 'text'"),
                        ({"kind": "vector", "vector": doc_vector(0), "fields": "v,w"}, "one vector field")):
        err = query.post(search, json={"vectorQueries": [vq]})
        assert err.status_code in (400, 501) and message in _error(err, err.status_code)["message"], (vq, err.text)


def test_nothing_asked_lists_everything_with_an_exact_count(query, vec_index):
    for body in ({}, {"search": "*"}):
        r = query.post(f"/indexes/{vec_index}/docs/search", json={**body, "filter": "lang eq 'en'", "count": True,
                                                                  "top": 3, "skip": 1, "facets": ["tags"]})
        assert r.status_code == 200, r.text
        listed = r.json()
        assert listed["@odata.count"] == 8 and [h["id"] for h in listed["value"]] == ["d03", "d06", "d09"]
        assert {f["value"]: f["count"] for f in listed["@search.facets"]["tags"]} == {"even": 4, "odd": 4}
    newest = query.post(f"/indexes/{vec_index}/docs/search", json={"orderby": "taken desc", "top": 2}).json()
    assert [h["id"] for h in newest["value"]] == ["d23", "d22"]


def test_several_vector_queries_are_fused(query, vec_index):
    r = query.post(f"/indexes/{vec_index}/docs/search", json={"debug": "all", "top": 5, "vectorQueries": [
        {"kind": "vector", "vector": doc_vector(2), "weight": 2.0},
        {"kind": "id", "id": "d07", "exhaustive": True}]})
    assert r.status_code == 200, r.text
    hits = r.json()["value"]
    assert hits[0]["id"] == "d02"  # first in the list weighted 2
    assert set(hits[0]["@search.subscores"]) == {"vector_query_1", "vector_query_2"}
    assert hits[0]["@search.subscores"]["vector_query_1"]["rank"] == 1
    assert hits[0]["@search.score"] == pytest.approx(sum(
        {"vector_query_1": 2.0, "vector_query_2": 1.0}[n] / (60 + s["rank"]) for n, s in hits[0]["@search.subscores"].items()))


def test_paging_is_consistent(query, vec_index):
    whole = [h["id"] for h in _vsearch(query, vec_index, doc_vector(3), top=12).json()["value"]]
    pages = [h["id"] for s in (0, 4, 8) for h in _vsearch(query, vec_index, doc_vector(3), top=4, skip=s).json()["value"]]
    assert pages == whole and len(set(whole)) == 12


def test_text_search_on_the_photo_index(query, sample_index, api_engine):
    for body in ({"search": "a photo of a cat"}, {"search": "a photo of a cat", "mode": "vector"},
                 {"vectorQueries": [{"kind": "text", "text": "a photo of a cat", "fields": "semantic", "k": 3}]}):
        r = query.post(f"/indexes/{sample_index}/docs/search", json={**body, "top": 3, "count": True})
        assert r.status_code == 200, (body, r.text)
        hits = r.json()["value"]
        assert hits[0]["path"].endswith("cat-chelsea.png"), (body, [h["path"] for h in hits])
        assert "content_hash" not in hits[0] and "semantic" not in hits[0]
    search = f"/indexes/{sample_index}/docs/search"
    first = query.post(search, json={"search": "a photo of a cat", "facets": ["format"], "top": 1}).json()
    fmt = first["value"][0]["format"]
    per_format = {f["value"]: f["count"] for f in first["@search.facets"]["format"]}
    body = query.post(search, json={"search": "a photo of a cat", "facets": ["format"], "filter": f"format eq '{fmt}'",
                                    "select": "path,format", "top": 100}).json()
    assert body["@search.facets"]["format"] == [{"value": fmt, "count": per_format[fmt]}]
    assert body["value"][0]["path"].endswith("cat-chelsea.png") and all(h["format"] == fmt for h in body["value"])
    assert all(set(h) == {"@search.score", "path", "format"} for h in body["value"])
    count = query.get(f"/indexes/{sample_index}/docs/$count")
    assert int(count.text) == api_engine.index(sample_index).count() > 0


def test_serve_command_accepts_stored_keys_and_refuses_others(home, engine, sample_index):
    """`pixsearch serve` as a user runs it: a stored query key may search, not write; no key -> 401."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    _, secret = engine.create_api_key("query", "serve test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("pixsearch")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port)], env=dict(os.environ, PIXSEARCH_HOME=str(home)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        found = httpx.post(f"{base}/indexes/{sample_index}/docs/search", headers={"api-key": secret},
                           json={"search": "a photo of a cat", "top": 1}, timeout=60)
        assert found.status_code == 200, found.text
        assert found.json()["value"][0]["path"].endswith("cat-chelsea.png")
        write = httpx.delete(f"{base}/indexes/{sample_index}", headers={"api-key": secret}, timeout=10)
        assert write.status_code == 403
        assert httpx.get(f"{base}/indexes", timeout=10).status_code == 401
        assert httpx.get(f"{base}/openapi.json", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_image_upload_is_indexed_and_served_as_a_thumbnail(admin, query, api_engine, samples):
    import io

    from PIL import Image

    name = "uploads-api"
    api_engine.create_photo_index(name)
    cat = (samples / "cat-chelsea.png").read_bytes()
    files = [("files", ("my cat.png", cat, "image/png")),
             ("files", ("notes.jpg", b"shopping list", "image/jpeg")),
             ("files", ("coffee.png", (samples / "coffee.png").read_bytes(), "image/png"))]
    response = admin.post(f"/indexes/{name}/images", files=files)
    assert response.status_code == 207, response.text
    results = response.json()["value"]
    assert [r["status"] for r in results] == [True, False, True]
    assert "not an image" in results[1]["errorMessage"] and results[1]["key"] is None
    again = admin.post(f"/indexes/{name}/images", files=[("files", ("cat again.png", cat, "image/png"))])
    assert again.status_code == 200 and again.json()["value"][0]["key"] == results[0]["key"]  # same bytes, same photo
    assert admin.get(f"/indexes/{name}/docs/$count").text == "2"

    found = query.post(f"/indexes/{name}/docs/search", json={"search": "a photo of a cat", "top": 1}).json()["value"]
    assert found[0]["id"] == results[0]["key"]

    thumb = query.get(f"/thumbnails/{results[0]['key']}", params={"index": name, "size": 128})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    image = Image.open(io.BytesIO(thumb.content))
    assert image.format == "WEBP" and max(image.size) == 128
    cached = query.get(f"/thumbnails/{results[0]['key']}", params={"index": name, "size": 128})
    assert cached.content == thumb.content
    assert query.get("/thumbnails/nope", params={"index": name}).status_code == 404
    assert query.post(f"/indexes/{name}/images", files=files[:1]).status_code == 403
    assert admin.get(f"/thumbnails/{results[0]['key']}", params={"index": name, "size": 4}).status_code == 400


def test_image_and_more_like_this_searches_on_the_photo_index(query, sample_index, samples, tmp_path):
    import base64

    from helpers import altered_copy

    rocket = altered_copy(samples / "rocket.jpg", tmp_path / "q.jpg").read_bytes()
    search = f"/indexes/{sample_index}/docs/search"
    for vq in ({"kind": "image", "image": base64.b64encode(rocket).decode()},
               {"kind": "imageBinary", "base64Image": "data:image/jpeg;base64," + base64.b64encode(rocket).decode()}):
        r = query.post(search, json={"vectorQueries": [vq], "top": 2})
        assert r.status_code == 200, r.text
        assert r.json()["value"][0]["path"].endswith("rocket.jpg")
    uploaded = query.post(f"/indexes/{sample_index}/images/search", files={"image": ("q.jpg", rocket, "image/jpeg")},
                          data={"query": '{"top": 2, "count": true, "select": "path"}'})
    assert uploaded.status_code == 200, uploaded.text
    first = uploaded.json()["value"][0]
    assert first["path"].endswith("rocket.jpg") and set(first) == {"@search.score", "path"}
    key = query.post(f"/indexes/{sample_index}/images/search", files={"image": ("q.jpg", rocket, "image/jpeg")}
                     ).json()["value"][0]["id"]
    like = query.post(search, json={"vectorQueries": [{"kind": "id", "id": key}], "top": 3}).json()["value"]
    assert like[0]["id"] == key and like[0]["@search.score"] == pytest.approx(1, abs=1e-5)
    bad = query.post(f"/indexes/{sample_index}/images/search", files={"image": ("x.jpg", b"not an image", "image/jpeg")})
    assert "not an image" in _error(bad, 400)["message"]
    bad = query.post(f"/indexes/{sample_index}/images/search", files={"image": ("q.jpg", rocket, "image/jpeg")},
                     data={"query": '{"top": "many"}'})
    assert "top" in _error(bad, 400)["message"]


def test_serve_prints_a_page_link_with_a_session_key(home, sample_index):
    """`pixsearch serve --session-key`: the printed link opens the page, its key searches but cannot write; a taken
    port is one clear error."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from helpers import read_page_link

    exe = Path(sys.executable).with_name("pixsearch")
    env = dict(os.environ, PIXSEARCH_HOME=str(home))
    proc = subprocess.Popen([str(exe), "serve", "--port", "0", "--session-key", "--index", sample_index], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base, key, _ = read_page_link(proc)
        page = httpx.get(base, timeout=30)
        assert page.status_code == 200 and f'data-default-index="{sample_index}"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert httpx.get(base + "static/app.js", timeout=10).headers["content-type"].startswith("text/javascript")
        found = httpx.post(f"{base}indexes/{sample_index}/docs/search", headers={"api-key": key},
                           json={"search": "a photo of a cat", "top": 1}, timeout=60)
        assert found.status_code == 200 and found.json()["value"][0]["path"].endswith("cat-chelsea.png")
        assert httpx.get(f"{base}indexes", headers={"api-key": key}, timeout=10).status_code == 403

        port = int(base.rsplit(":", 1)[1].strip("/"))
        taken = subprocess.run([str(exe), "serve", "--port", str(port), "--session-key"], env=env, capture_output=True,
                               text=True, timeout=120)
        assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert "search page" not in taken.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_served_connections_send_without_nagle_delay():
    """Each response must leave at once: without TCP_NODELAY on accepted connections, a keep-alive client waits for
    its own delayed ACK (~40 ms) on every request. asyncio sets it only if the listening socket says TCP."""
    import asyncio
    import socket

    from pixsearch.api.server import bind

    async def nodelay_of_a_served_connection() -> int:
        sock = bind("127.0.0.1", 0)
        made = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                made.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        value = await asyncio.wait_for(made, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(nodelay_of_a_served_connection()) != 0

"""Hostile requests to the REST API (issue 19, items 4 and 6): what a client without a key, or with a query key,
can make the server read, parse or sort. Real server on loopback, real embedded PostgreSQL, real stored keys.

Every test here failed before the fix it covers.
"""
from __future__ import annotations

import uuid

import httpx
import pytest

from pixsearch.api import create_app
from pixsearch.api.server import serving_in_thread
from pixsearch.limits import API_KEY_CACHE_SECONDS, MAX_BODY_BYTES, MAX_FIELD_LIST_ITEM_CHARS
from pixsearch.search.request import SearchRequest

MB = 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def docs_index(admin):
    """A small precomputed-vector index: key, two document fields and one vector field (4 fields in all)."""
    name = "hostile-api-" + uuid.uuid4().hex[:6]
    definition = {"fields": [{"name": "title", "type": "string", "sortable": True},
                             {"name": "n", "type": "int", "sortable": True}],
                  "vectorFields": [{"name": "v", "dimensions": 2}]}
    assert admin.put(f"/indexes/{name}", json=definition).status_code == 201
    docs = [{"@search.action": "upload", "id": f"d{i}", "title": f"doc {i}", "n": i, "v": [1.0, i / 10]}
            for i in range(5)]
    assert admin.post(f"/indexes/{name}/docs/index", json={"value": docs}).status_code == 200
    yield name
    admin.delete(f"/indexes/{name}")


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# -- item 4: orderby and select name at most as many items as the index has fields ------------------------------------
def test_orderby_with_more_items_than_the_index_has_fields_is_refused_before_it_is_parsed(query, docs_index):
    url = f"/indexes/{docs_index}/docs/search"
    fine = query.post(url, json={"search": "*", "orderby": "n desc, title, id asc"})
    assert fine.status_code == 200 and [d["n"] for d in fine.json()["value"]] == [4, 3, 2, 1, 0]
    # five readable items, each a sortable field, on an index of four fields: refused, not sorted five times
    error = _error(query.post(url, json={"search": "*", "orderby": ", ".join(["n desc"] * 5)}), 400)
    assert error["message"] == f"orderby: 5 items, but index {docs_index!r} has 4 fields; name each at most once"
    # the count comes before any parsing: unreadable items get the same answer, not one per item
    many = ",".join(["n up"] * 1_100_000)  # 5.5 MB; parsing it would answer "cannot read 'n up'"
    error = _error(query.post(url, json={"search": "*", "orderby": many}), 400)
    assert error["message"].startswith("orderby: 1100000 items, but index")
    # one item padded to 10,000 characters: the length bound (4 fields x 64 characters at most)
    padded = "n" + " " * 10_000 + "desc"
    error = _error(query.post(url, json={"search": "*", "orderby": padded}), 400)
    assert error["message"] == (f"orderby: {len(padded)} characters; index {docs_index!r} has 4 fields, so at most "
                                f"{4 * MAX_FIELD_LIST_ITEM_CHARS} characters ({MAX_FIELD_LIST_ITEM_CHARS} per item)")


def test_select_with_more_items_than_the_index_has_fields_is_refused_before_it_is_parsed(query, docs_index):
    url = f"/indexes/{docs_index}/docs/search"
    fine = query.post(url, json={"search": "*", "select": "id, title, n", "orderby": "n"})
    assert fine.status_code == 200 and fine.json()["value"][0] == {"@search.score": 1.0, "id": "d0", "title": "doc 0",
                                                                  "n": 0}
    error = _error(query.post(url, json={"search": "*", "select": ",".join(["title"] * 5)}), 400)
    assert error["message"] == f"select: 5 items, but index {docs_index!r} has 4 fields; name each at most once"
    many = ",".join(["nope"] * 1_000_000)  # a per-name check would answer "has no field 'nope'"
    assert _error(query.post(url, json={"search": "*", "select": many}), 400)["message"].startswith(
        "select: 1000000 items, but index")
    padded = "title" + " " * 1_000_000
    assert _error(query.post(url, json={"search": "*", "select": padded}), 400)["message"].startswith(
        f"select: {len(padded)} characters; index")
    # the document lookup's $select too (vector fields count: it may select them)
    lookup = f"/indexes/{docs_index}/docs/d1"
    assert query.get(lookup, params={"$select": "id, title, n, v"}).status_code == 200
    error = _error(query.get(lookup, params={"$select": "id,title,n,v,id"}), 400)
    assert error["message"] == f"select: 5 items, but index {docs_index!r} has 4 fields; name each at most once"


def test_a_sort_with_more_keys_than_the_index_has_fields_is_refused_by_the_service(api_engine, docs_index):
    """The same bound for the Python API and the CLI, which pass sort keys without an orderby string."""
    index = api_engine.index(docs_index)
    assert [h.id for h in index.query(SearchRequest(sort=[("n", True)] * 4, top=5))] == ["d4", "d3", "d2", "d1", "d0"]
    with pytest.raises(ValueError, match=f"sort: 5 keys, but index '{docs_index}' has 4 fields"):
        index.query(SearchRequest(sort=[("n", True)] * 5))


# -- item 6: the key is checked before the body is read ---------------------------------------------------------------
def _streamed(size: int, counter: dict):
    """`size` bytes in 64 KB chunks, counting how many the client was asked for (what the server took in, plus
    what the kernel's socket buffers hold)."""
    while counter["sent"] < size:
        counter["sent"] += CHUNK
        yield b" " * CHUNK


def test_a_keyless_upload_is_refused_before_its_body_is_read(anon, docs_index):
    """15 MB, under the body limit: the server used to read all of it before answering 401. Now the 401 goes out
    first and closes the connection, so the client stops sending; socket buffers hold a few MB at most."""
    url = f"/indexes/{docs_index}/docs/index"
    size = 15 * MB
    assert size < MAX_BODY_BYTES
    for declared in ({"content-length": str(size)}, {}):  # a declared length, and chunked (no length)
        counter = {"sent": 0}
        r = anon.post(url, content=_streamed(size, counter), headers={"content-type": "application/json", **declared})
        assert _error(r, 401)["message"] == "missing api-key header"
        assert counter["sent"] <= size // 2, (declared, counter)
        counter = {"sent": 0}
        r = anon.post(url, content=_streamed(size, counter),
                      headers={"content-type": "application/json", "api-key": "wrong", **declared})
        assert _error(r, 401)["message"] == "invalid api-key"
        assert counter["sent"] <= size // 2, (declared, counter)
    # a declared length over the limit is still refused first (413), with or without a key, reading nothing
    counter = {"sent": 0}
    over = MAX_BODY_BYTES + MB
    r = anon.post(url, content=_streamed(over, counter), headers={"content-length": str(over)})
    assert _error(r, 413)["code"] == "RequestEntityTooLarge"
    assert counter["sent"] <= over // 2


def test_a_query_key_upload_to_an_admin_route_is_refused_before_its_body_is_read(query, docs_index):
    counter = {"sent": 0}
    r = query.post(f"/indexes/{docs_index}/docs/index", content=_streamed(15 * MB, counter),
                   headers={"content-type": "application/json"})
    assert _error(r, 403)["message"] == "this operation needs an admin key"
    assert counter["sent"] <= 15 * MB // 2


# -- stored keys: the cached answer (README, Security: "kept for 30 s") ----------------------------------------------
def test_a_stored_key_answer_is_kept_for_30_seconds_then_asked_again(api_engine):
    """A revoked key keeps its cached role until the entry is API_KEY_CACHE_SECONDS old, then is refused. The
    cache's clock is driven by the test: no waiting."""
    now = [1000.0]
    key, secret = api_engine.create_api_key("query", "cache test")
    app = create_app(api_engine, key_lookup=api_engine.api_key_role, key_clock=lambda: now[0])
    with serving_in_thread(app) as url:
        def status() -> int:  # /indexes needs an admin key: a query key gets 403, an unknown or revoked one 401
            return httpx.get(f"{url}/indexes", headers={"api-key": secret}, timeout=60).status_code

        assert status() == 403  # looked up in the database, and cached
        assert api_engine.revoke_api_key(key.id)
        assert status() == 403  # the cached answer: the database is not asked again
        now[0] += API_KEY_CACHE_SECONDS - 0.5
        assert status() == 403
        now[0] += 1.0
        assert status() == 401  # the entry expired: asked again, and the key is revoked

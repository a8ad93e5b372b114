"""Hostile input: what a query key, an admin key, a web page elsewhere or a strange file can make the server do.

Every test here failed before the fix it covers (issue 9's security review). Real server on loopback, real
embedded PostgreSQL, real files: FIFOs, symbolic links, huge headers, EXIF with NUL bytes.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ADMIN_KEY, QUERY_KEY, run_cli
from helpers import copy_some, noise_images
from pixsearch.api import create_app
from pixsearch.api.server import serving_in_thread
from pixsearch.config import Settings
from pixsearch.db.database import redact
from pixsearch.ingest.decode import DecodeError, decode_bytes
from pixsearch.ingest.metadata import clean_text
from pixsearch.ingest.pipeline import _write_or_bisect
from pixsearch.search.context import FileTermRefused, QueryVectorCache
from pixsearch.search.odata import FilterSyntaxError, parse_filter
from pixsearch.service import Engine
from pixsearch.store import PhotoRecord

ADMIN, QUERY = ADMIN_KEY, QUERY_KEY


@pytest.fixture(scope="module")
def photos(api_engine, samples, tmp_path_factory):
    """A small photo index of its own (tests here change photos)."""
    folder = tmp_path_factory.mktemp("hostile-photos")
    copy_some(samples, folder, ["cat-chelsea.png", "coffee.png", "rocket.jpg"])
    name = "hostile-" + uuid.uuid4().hex[:6]
    report = api_engine.index(name, create=True).add_paths([folder])
    assert not report.failed
    return name, folder


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# -- high: a query key must not make the server open a path ------------------------------------------------------------
def test_file_terms_from_the_api_get_one_fixed_answer_whatever_the_path(query, photos, tmp_path):
    name, folder = photos
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    targets = ["/etc/passwd", "/nonexistent/x.jpg", "/root", "/dev/zero", str(fifo), str(folder / "coffee.png")]
    answers = set()
    for target in targets:
        for body in ({"search": f"image:{target}"},
                     {"search": f'"a cat" + image:"{target}"'},
                     {"vectorQueries": [{"kind": "text", "text": f"image:{target}"}]}):
            started = time.monotonic()
            r = query.post(f"/indexes/{name}/docs/search", json=body)
            assert time.monotonic() - started < 10  # /dev/zero and the FIFO are never read
            assert r.status_code == 400
            answers.add(r.text)
        r = query.post(f"/indexes/{name}/images/search", files={"image": ("x.png", _png())},
                       data={"query": json.dumps({"search": f"image:{target}"})})
        answers.add(r.text if r.status_code == 400 else f"status {r.status_code}")
    assert len(answers) == 1, answers  # same status and body for a file, a folder, a device, nothing at all
    error = json.loads(answers.pop())["error"]
    assert error["message"] == FileTermRefused.MESSAGE
    assert "/images/search" in error["message"] and "imageBinary" in error["message"]


def test_file_terms_still_work_from_the_cli_and_python(api_engine, photos):
    name, folder = photos
    hits = api_engine.index(name).search(f'"a cup" + image:{folder / "coffee.png"}', k=1)
    assert hits[0].path.endswith("coffee.png")


# -- medium: photo system fields are read-only from the API ----------------------------------------------------------
def test_photo_files_and_facts_cannot_be_written_through_the_api(admin, query, photos, api_engine):
    name, folder = photos
    idx = api_engine.index(name)
    key = next(iter(idx.get([h.id for h in idx.query(_browse())], vectors=False)))
    attempts = [
        {"@search.action": "upload", "id": "x", "path": "/etc/passwd"},
        {"@search.action": "mergeOrUpload", "id": "y", "path": "/etc/passwd"},
        {"@search.action": "merge", "id": key, "path": "/etc/passwd"},
        {"@search.action": "merge", "id": key, "content_hash": "0" * 32},
        {"@search.action": "merge", "id": key, "width": 1},
        {"@search.action": "merge", "id": key, "tags": ["x"]},
        {"@search.action": "merge", "id": key, "semantic": [0.0] * 384},
    ]
    r = admin.post(f"/indexes/{name}/docs/index", json={"value": attempts})
    assert r.status_code == 207
    assert [v["statusCode"] for v in r.json()["value"]] == [400] * len(attempts)
    assert "cannot be uploaded" in r.json()["value"][0]["errorMessage"]
    assert "ingest and uploads" in r.json()["value"][2]["errorMessage"]
    assert _error(query.get("/thumbnails/x", params={"index": name}), 404)
    assert idx.get([key], vectors=False)[key]["path"].startswith(str(folder))
    # descriptive metadata may be merged; the rest of the photo is kept
    r = admin.post(f"/indexes/{name}/docs/index", json={"value": [{"@search.action": "merge", "id": key,
                                                                   "camera": "Edited Camera"}]})
    assert r.status_code == 200, r.text
    stored = idx.get([key], vectors=True)[key]
    assert stored["camera"] == "Edited Camera" and stored["path"].startswith(str(folder))
    assert stored["semantic"] is not None


def test_thumbnails_open_only_files_inside_the_indexed_folders(query, photos, api_engine, tmp_path):
    name, folder = photos
    idx = api_engine.index(name)
    outside = tmp_path / "secret.png"
    shutil.copy(folder / "coffee.png", outside)
    (folder / "link.png").symlink_to(outside)
    with api_engine.db.connection() as conn:  # rows as an older version could have let an admin write them
        for key, path in (("outside", str(outside)), ("dotdot", str(folder / ".." / outside.name)),
                          ("link", str(folder / "link.png")), ("device", "/dev/zero")):
            conn.execute(f"INSERT INTO {idx.spec.table_name} (id, path, content_hash) VALUES (%s, %s, %s)",
                         (key, path, "../../../../tmp/evil"))
    for key in ("outside", "dotdot", "link", "device"):
        assert _error(query.get(f"/thumbnails/{key}", params={"index": name, "size": 128}), 404)
    inside = next(h.id for h in idx.query(_browse()) if h.document.get("filename") == "coffee.png")
    r = query.get(f"/thumbnails/{inside}", params={"index": name, "size": 128})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size[0] <= 128
    cache = api_engine.settings.cache_dir / "thumbnails"
    assert all(p.parent == cache and len(p.name.split("-")[0]) == 32 for p in cache.rglob("*.webp"))
    assert not list(Path("/tmp").glob("evil*"))


def test_thumbnail_sizes_are_a_fixed_set(query, photos, api_engine):
    name, _ = photos
    key = next(h.id for h in api_engine.index(name).query(_browse()))
    for size in (16, 300, 2048, 100000):
        assert "128, 256, 512, 1024" in _error(query.get(f"/thumbnails/{key}", params={"index": name, "size": size}),
                                               400)["message"]
    for size in (128, 256, 512, 1024):
        assert query.get(f"/thumbnails/{key}", params={"index": name, "size": size}).status_code == 200


def test_thumbnail_cache_is_bounded(home, embedder, samples, tmp_path):
    settings = Settings.load(home=tmp_path / "home", thumbnail_cache_mb=0.03)
    with Engine(settings, embedder=embedder) as engine:
        folder = tmp_path / "p"
        copy_some(samples, folder, ["cat-chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "moon.png"])
        idx = engine.index("bounded", create=True)
        idx.add_paths([folder])
        for hit in idx.query(_browse()):
            for size in (512, 1024):
                idx.thumbnail(hit.id, size)
        files = list((settings.cache_dir / "thumbnails").glob("*.webp"))
        assert sum(f.stat().st_size for f in files) <= 30_000 and len(files) < 10


def test_concurrent_thumbnail_writes_do_not_share_a_temporary_file(api_engine, photos):
    name, _ = photos
    idx = api_engine.index(name)
    key = next(h.id for h in idx.query(_browse()) if h.document.get("filename") == "rocket.jpg")
    for p in (api_engine.settings.cache_dir / "thumbnails").glob("*-1024.webp"):
        p.unlink()
    results, errors = [], []

    def make() -> None:
        try:
            results.append(api_engine.index(name).thumbnail(key, 1024))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert not list((api_engine.settings.cache_dir / "thumbnails").glob(".*tmp"))


def test_thumbnail_of_a_document_index_is_404(admin, query):
    name = "docs-" + uuid.uuid4().hex[:6]
    assert admin.put(f"/indexes/{name}", json={"vectorFields": [{"name": "v", "dimensions": 2}]}).status_code == 201
    admin.post(f"/indexes/{name}/docs/index", json={"value": [{"id": "a", "v": [1.0, 0.0]}]})
    assert _error(query.get("/thumbnails/a", params={"index": name}), 404)


def test_uploads_and_thumbnails_are_private_to_the_user(admin, query, photos, api_engine):
    name, _ = photos
    r = admin.post(f"/indexes/{name}/images", files={"files": ("mine.png", _png(color=(1, 2, 3)))})
    assert r.status_code == 200, r.text
    key = r.json()["value"][0]["key"]
    assert query.get(f"/thumbnails/{key}", params={"index": name, "size": 128}).status_code == 200
    uploads = api_engine.settings.home / "uploads" / name
    thumbs = api_engine.settings.cache_dir / "thumbnails"
    for folder in (uploads, thumbs):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in [*uploads.iterdir(), *thumbs.glob("*.webp")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


# -- medium: scanning ------------------------------------------------------------------------------------------------
def test_scan_reads_regular_files_only_and_skips_links_unless_asked(engine, index_name, samples, tmp_path):
    folder = tmp_path / "lib"
    copy_some(samples, folder, ["coffee.png"])
    os.mkfifo(folder / "pipe.jpg")
    outside = tmp_path / "elsewhere"
    copy_some(samples, outside, ["rocket.jpg"])
    (folder / "link.jpg").symlink_to(outside / "rocket.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "loop").symlink_to(folder)  # a cycle when links are followed
    idx = engine.index(index_name, create=True)
    started = time.monotonic()
    report = idx.add_paths([folder])
    assert time.monotonic() - started < 60
    assert report.added == 1 and not report.failed
    skipped = dict(report.skipped)
    assert "symbolic link" in skipped[str(folder / "link.jpg")] and "FIFO" in skipped[str(folder / "pipe.jpg")]
    assert str(folder / "loop") in skipped
    followed = idx.add_paths([folder], follow_symlinks=True)
    assert followed.added == 1  # link.jpg; the cycle ends, /dev/zero is not a regular file
    assert "character device" in dict(followed.skipped)[str(folder / "zero.jpg")]
    assert idx.count() == 2


def test_every_read_is_bounded(embedder, samples, tmp_path):
    settings = Settings.load(home=tmp_path / "home", max_file_mb=0.05)
    folder = tmp_path / "lib"
    copy_some(samples, folder, ["coffee.png", "rocket.jpg"])  # ~30 KB and ~100+ KB
    with Engine(settings, embedder=embedder) as engine:
        report = engine.index("bounded", create=True).add_paths([folder])
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    too_big = [name for name, size in sizes.items() if size > 50_000]
    assert too_big and sorted(Path(p).name for p, _ in report.failed) == sorted(too_big)
    assert all("limit" in reason for _, reason in report.failed)


# -- medium: bounded work per request ----------------------------------------------------------------------------------
def test_request_limits(query, photos):
    name, _ = photos
    url = f"/indexes/{name}/docs/search"
    assert "1000 characters" in _error(query.post(url, json={"search": "x" * 1001}), 400)["message"]
    assert "10 facets" in _error(query.post(url, json={"search": "cat", "facets": ["tags"] * 11}), 400)["message"]
    ids = [f"id{i}" for i in range(101)]
    assert "100 stored ids" in _error(query.post(url, json={"search": "ids:" + ",".join(ids)}), 400)["message"]
    split = {"vectorQueries": [{"kind": "id", "ids": ids[:60]}, {"kind": "id", "ids": ids[60:]}]}
    assert "100 stored ids" in _error(query.post(url, json=split), 400)["message"]
    assert _error(query.post(url, json={"vectorQueries": [{"kind": "id", "ids": ids}]}), 400)


def test_query_vector_cache_is_bounded_in_bytes():
    cache = QueryVectorCache(size=1000, max_bytes=10_000)
    for i in range(50):
        cache.get(("text", "m", str(i)), lambda: np.ones(512, np.float32))  # 2 KB each
    assert cache.bytes <= 10_000 and len(cache._items) <= 5


def test_statement_timeout_is_a_clear_503(home, embedder, api_engine):
    name = "slow-" + uuid.uuid4().hex[:6]
    from pixsearch.store import VectorField

    idx = api_engine.create_index(name, [VectorField("v", 64, algorithm="exact")])
    rng = np.random.default_rng(0)
    idx.add_vectors([f"d{i}" for i in range(40_000)], rng.normal(size=(40_000, 64)).astype(np.float32))
    with Engine(Settings.load(home=home), embedder=embedder, statement_timeout_s=0.001) as bounded:
        with serving_in_thread(create_app(bounded, admin_keys=[ADMIN])) as url:
            body = {"vectorQueries": [{"kind": "vector", "vector": [0.1] * 64, "k": 50}], "facets": ["id"] * 0}
            r = httpx.post(f"{url}/indexes/{name}/docs/search", json=body, headers={"api-key": ADMIN}, timeout=30)
    error = _error(r, 503)
    assert error["code"] == "QueryTimeout" and "api_statement_timeout" in error["message"]
    assert r.headers["Retry-After"]


def test_key_checks_do_not_queue_behind_a_busy_pool(home, embedder):
    """A stored key is looked up on a connection of its own while every pool connection is taken (on the pool it
    would wait 30 s and answer 503); once cached, it is answered with no connection free at all. How long the
    answer is kept: tests/test_hostile_api.py."""
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        _, secret = engine.create_api_key("query", "pool test")
        app = create_app(engine, key_lookup=engine.api_key_role)
        with serving_in_thread(app) as url:
            held = [engine.db.pool.getconn() for _ in range(engine.db.pool.max_size)]
            try:
                r = httpx.get(f"{url}/indexes", headers={"api-key": secret}, timeout=60)
                assert r.status_code == 403, r.text  # the query role, found on the side connection
                with engine.db.side_connection():  # now no connection is free: only the cache can answer
                    r = httpx.get(f"{url}/indexes", headers={"api-key": secret}, timeout=60)
                    assert r.status_code == 403, r.text
            finally:
                for conn in held:
                    engine.db.pool.putconn(conn)


# -- medium: decoding ------------------------------------------------------------------------------------------------
def test_pixel_count_is_checked_from_the_header_before_decoding():
    huge = io.BytesIO()
    Image.new("L", (12000, 5000)).save(huge, "PNG")  # 60 MP of zeros: a small file
    tracemalloc.start()
    with pytest.raises(DecodeError, match="60 megapixels, over the 50 MP limit"):
        decode_bytes(huge.getvalue())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20_000_000  # never decoded
    small = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(small, "PNG")
    with pytest.raises(DecodeError, match="over the 1 MP limit"):
        decode_bytes(small.getvalue(), max_pixels=1_000_000)


def test_sixteen_bit_images_are_converted_without_float64_copies():
    frame = (np.arange(4000 * 3000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(3000, 4000)
    data = io.BytesIO()
    Image.fromarray(frame).save(data, "PNG", compress_level=1)
    tracemalloc.start()
    decoded = decode_bytes(data.getvalue())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert decoded.image.mode == "RGB"
    assert peak < 3 * frame.nbytes  # a float64 copy alone would be 4x the frame


# -- medium: anonymous, Host, cross-site ---------------------------------------------------------------------------------
def test_anonymous_grants_the_query_role_only(api_engine, photos):
    name, _ = photos
    with serving_in_thread(create_app(api_engine, allow_anonymous=True)) as url:
        assert httpx.post(f"{url}/indexes/{name}/docs/search", json={"search": "a cat"}).status_code == 200
        for method, path, kwargs in [
            ("PUT", "/indexes/anon-made", {"json": {"vectorFields": [{"name": "v", "dimensions": 2}]}}),
            ("DELETE", f"/indexes/{name}", {}),
            ("POST", f"/indexes/{name}/docs/index", {"json": {"value": []}}),
            ("POST", f"/indexes/{name}/images", {"files": {"files": ("a.png", _png())}}),
        ]:
            err = _error(httpx.request(method, url + path, **kwargs), 403)
            assert "--anonymous" in err["message"]
    assert api_engine.index(name).count() >= 3


def test_requests_must_name_this_server(query, photos):
    name, _ = photos
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
        r = query.post(f"/indexes/{name}/docs/search", json={"search": "cat"}, headers={"host": host})
        assert r.status_code == 421, host
    assert query.post(f"/indexes/{name}/docs/search", json={"search": "cat"},
                      headers={"host": "localhost"}).status_code == 200


def test_cross_site_requests_cannot_write_or_upload(base_url, photos):
    name, _ = photos
    # A form on another site needs no preflight for multipart; anonymous servers would take it without a key.
    for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}, {"origin": "null"}):
        r = httpx.post(f"{base_url}/indexes/{name}/images/search", files={"image": ("a.png", _png())},
                       headers={"api-key": QUERY, **headers})
        assert r.status_code == 403, headers
    same = httpx.post(f"{base_url}/indexes/{name}/images/search", files={"image": ("a.png", _png())},
                      headers={"api-key": QUERY, "origin": base_url, "sec-fetch-site": "same-origin"})
    assert same.status_code == 200, same.text


# -- low ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["width eq -²", "width eq ²", "width eq ٣", "width eq -٣"])
def test_unicode_digits_are_a_syntax_error_with_a_position(text, query, photos):
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter(text)
    assert caught.value.position == 9
    err = _error(query.post(f"/indexes/{photos[0]}/docs/search", json={"search": "cat", "filter": text}), 400)
    assert err["position"] == 9


def test_nul_characters_are_400_not_500(admin, query, photos):
    name, _ = photos
    url = f"/indexes/{name}/docs/search"
    assert _error(query.post(url, json={"search": "cat\u0000"}), 400)
    assert _error(query.post(url, json={"search": "cat", "filter": "camera eq 'a\u0000'"}), 400)
    assert _error(query.post(url, content=b'{"search": "c\\u0000t"}', headers={"content-type": "application/json"}),
                  400)
    assert query.post(url, json={"search": "c\\u0000t"}).status_code == 200  # an escaped backslash, not a NUL
    assert _error(admin.put("/indexes/a%00b", json={"vectorFields": [{"name": "v", "dimensions": 2}]}), 400)
    assert _error(query.get(f"/indexes/{name}/docs/a%00b"), 400)
    docs = "docs-" + uuid.uuid4().hex[:6]
    definition = {"fields": [{"name": "title", "type": "string", "searchable": True}],
                  "vectorFields": [{"name": "v", "dimensions": 2}]}
    assert admin.put(f"/indexes/{docs}", json=definition).status_code == 201
    with httpx.Client(base_url=str(admin.base_url), headers={"api-key": ADMIN}) as raw:
        # JSON escapes that reach the service as NUL (the guard refuses the body; per-document checks back it up)
        r = raw.post(f"/indexes/{docs}/docs/index", content=json.dumps(
            {"value": [{"id": "k\u0000", "v": [1, 0]}, {"id": "ok", "title": "x\u0000", "v": [1, 0]}]}),
            headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_index_definitions_are_checked_field_by_field(admin):
    base = {"fields": [{"name": "id", "type": "Edm.String", "key": True}, {"name": "v",
            "type": "Collection(Edm.Single)", "dimensions": 2, "vectorSearchProfile": "p"}],
            "vectorSearch": {"profiles": [{"name": "p", "algorithm": "a"}],
                             "algorithms": [{"name": "a", "kind": "hnsw"}]}}

    def put(name: str, body: dict) -> httpx.Response:
        return admin.put(f"/indexes('{name}')", json={**body, "name": name}, params={"api-version": "2024-07-01"})

    bad_params = json.loads(json.dumps(base))
    bad_params["vectorSearch"]["algorithms"][0]["hnswParameters"] = "m=4"
    assert "must be an object" in _error(put("hp-1", bad_params), 400)["message"]
    assert _error(put("hp-2", {**base, "frobnicate": 1}), 400)["message"].startswith("unknown property")
    assert _error(put("hp-3", {**base, "scoringProfiles": [{"name": "s"}]}), 501)
    garbage_field = json.loads(json.dumps(base))
    garbage_field["fields"][0]["wibble"] = True
    assert _error(put("hp-4", garbage_field), 400)
    analyzer = json.loads(json.dumps(base))
    analyzer["fields"][0]["analyzer"] = "en.microsoft"
    assert _error(put("hp-5", analyzer), 501)
    bad_type = json.loads(json.dumps(base))
    bad_type["fields"].append({"name": "g", "type": "Edm.Nonsense"})
    assert _error(put("hp-6", bad_type), 400)
    geo = json.loads(json.dumps(base))
    geo["fields"].append({"name": "g", "type": "Edm.GeographyPoint"})
    assert _error(put("hp-7", geo), 501)


def test_names_are_matched_whole_and_table_names_cannot_collide(admin):
    body = {"vectorFields": [{"name": "v", "dimensions": 2}]}
    assert _error(admin.put("/indexes/abc%0A", json=body), 400)
    assert _error(admin.put("/indexes/okname", json={**body, "key": "Bad Key"}), 400)
    assert _error(admin.put("/indexes/okname", json={**body, "key": "key\n"}), 400)
    suffix = uuid.uuid4().hex[:6]
    assert admin.put(f"/indexes/a-{suffix}", json=body).status_code == 201
    err = _error(admin.put(f"/indexes/a_{suffix}", json=body), 409)
    assert "same in table names" in err["message"]
    long_a, long_b = "v" * 39 + "a", "v" * 39 + "b"
    long_name = "l" * 40
    admin.delete(f"/indexes/{long_name}")
    r = admin.put(f"/indexes/{long_name}", json={"vectorFields": [{"name": long_a, "dimensions": 2},
                                                                 {"name": long_b, "dimensions": 2}]})
    assert r.status_code == 201, r.text  # their index names would be cut to the same 63 bytes


def test_docs_load_nothing_from_elsewhere(base_url):
    r = httpx.get(f"{base_url}/docs")
    assert r.status_code == 200 and "cdn" not in r.text.lower() and "https://" not in r.text.split("<body")[1]
    assert "script-src 'self' 'unsafe-inline'" in r.headers["content-security-policy"]
    assert httpx.get(f"{base_url}/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_file_names_with_rich_markup_do_not_break_the_cli(home, samples, tmp_path):
    folder = tmp_path / "odd"
    (folder / "a[").mkdir(parents=True)
    shutil.copy(samples / "coffee.png", folder / "a[" / "].png")  # the path reads a[/].png: a Rich closing tag
    (folder / "[bold]b[").mkdir()
    shutil.copy(samples / "rocket.jpg", folder / "[bold]b[" / "bold].jpg")
    name = "markup-" + uuid.uuid4().hex[:6]
    r = run_cli("index", str(folder), "--index", name, home=home)
    assert r.returncode == 0, r.stderr
    r = run_cli("search", "coffee", "--index", name, "-k", "2", home=home)
    assert r.returncode == 0 and "a[/].png" in r.stdout, r.stdout + r.stderr


def test_passwords_are_redacted_in_every_conninfo_form(home):
    for conninfo in ("postgresql://u:hunter2@127.0.0.1:1/db", "postgresql://u@127.0.0.1:1/db?password=hunter2",
                     "host=127.0.0.1 port=1 user=u password=hunter2", "host=127.0.0.1 port=1 password='hunter2'"):
        assert "hunter2" not in redact(conninfo)
        r = run_cli("indexes", "list", home=home, env={"PIXSEARCH_DATABASE_URL": conninfo}, timeout=60)
        assert r.returncode == 1 and "hunter2" not in r.stderr + r.stdout and "cannot connect" in r.stderr


# -- bad bytes in real photos ------------------------------------------------------------------------------------------
def _exif(ifd0: list, exif_ifd: list | None = None, gps: list | None = None) -> bytes:
    """A little-endian TIFF/EXIF block from (tag, type, values) entries, written byte by byte: Pillow's own writer
    would clean the very values these tests need (NUL inside strings, zero denominators)."""

    def encode(kind: int, value) -> tuple[int, bytes]:
        if kind == 2:
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            return len(raw) + 1, raw + b"\0"
        if kind == 4:
            return len(value), b"".join(struct.pack("<I", v) for v in value)
        if kind == 5:
            return len(value), b"".join(struct.pack("<II", n, d) for n, d in value)
        raise ValueError(kind)

    ifds = [list(ifd0)]
    for tag, extra in ((0x8769, exif_ifd), (0x8825, gps)):
        if extra is not None:
            ifds[0].append((tag, 4, [0]))  # patched with the sub-IFD's offset below
            ifds.append(list(extra))

    def layout(offsets: list[int]) -> tuple[bytes, list[int]]:
        out, starts = bytearray(b"II*\x00" + struct.pack("<I", 8)), []
        for n, entries in enumerate(ifds):
            entries = sorted(entries)
            start = len(out)
            starts.append(start)
            data_at = start + 2 + 12 * len(entries) + 4
            table, data = bytearray(struct.pack("<H", len(entries))), bytearray()
            for tag, kind, value in entries:
                if tag in (0x8769, 0x8825):
                    value = [offsets[1 if tag == 0x8769 else (2 if exif_ifd is not None else 1)]]
                count, raw = encode(kind, value)
                if len(raw) <= 4:
                    table += struct.pack("<HHI", tag, kind, count) + raw.ljust(4, b"\0")
                else:
                    table += struct.pack("<HHII", tag, kind, count, data_at + len(data))
                    data += raw + (b"\0" if len(raw) % 2 else b"")
            table += struct.pack("<I", 0)
            out += table + data
        return bytes(out), starts

    _, starts = layout([0, 0, 0])
    blob, _ = layout(starts)
    return b"Exif\x00\x00" + blob


def _jpeg_with_exif(path: Path, color, exif: bytes) -> Path:
    Image.new("RGB", (96, 64), color).save(path, "JPEG", exif=exif)
    return path


def test_bad_bytes_in_photo_metadata_never_stop_a_run(home, tmp_path):
    folder = tmp_path / "phone"
    noise_images(folder, 50, 48, 64, seed=3, name="good-{:02d}.jpg")
    bad = {
        "nul-make.jpg": _exif([(271, 2, "Nokia\x002"), (272, 2, "6300")]),
        "invalid-utf8-model.jpg": _exif([(271, 2, "Acme"), (272, 2, b"Caf\xe9 \xff\xfe")]),
        "long-artist.jpg": _exif([(315, 2, "A" * 50_000), (271, 2, "M" * 5000)]),
        "zero-denominator-gps.jpg": _exif([(271, 2, "GPS")], gps=[
            (1, 2, "N"), (2, 5, [(1, 0), (2, 1), (3, 1)]), (3, 2, "E"), (4, 5, [(5, 1), (0, 0), (1, 1)])]),
        "bad-date.jpg": _exif([(271, 2, "D")], exif_ifd=[(36867, 2, "2021:13:45 99:99:99\x00junk")]),
        "broken-exif.jpg": b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",
    }
    for i, (name, exif) in enumerate(bad.items()):
        _jpeg_with_exif(folder / name, (40 * i, 100, 200), exif)
    name = "badbytes-" + uuid.uuid4().hex[:6]
    r = run_cli("index", str(folder), "--index", name, "--json", home=home)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["added"] == 56 and not report["failed"], report
    with Engine(Settings.load(home=home)) as engine:
        idx = engine.index(name)
        rows = {d["filename"]: d for d in (h.document for h in idx.query(_browse(top=100)))}
    assert rows["nul-make.jpg"]["camera"] == "Nokia2 6300"
    assert "\ufffd" in rows["invalid-utf8-model.jpg"]["camera"] and "Café" not in rows["invalid-utf8-model.jpg"]["camera"]
    assert len(rows["long-artist.jpg"]["camera"]) <= 256
    assert rows["zero-denominator-gps.jpg"]["gps_lat"] is None


def test_clean_text_handles_odd_types():
    assert clean_text("Nokia\x002") == "Nokia2"
    assert clean_text(b"\xff\xfeabc\x00") == "\ufffd\ufffdabc"
    assert clean_text("Caf\xc3\xa9") == "Café"  # UTF-8 bytes that Pillow decoded as Latin-1
    assert clean_text("x" * 1000) == "x" * 256
    assert clean_text((1, 2)) is None and clean_text(3) == "3" and clean_text(float("nan")) is None
    assert clean_text("bad\udcff name") == "bad\ufffd name"


def test_rows_the_database_refuses_are_reported_one_by_one(engine, index_name):
    idx = engine.index(index_name, create=True)
    dims = {vf.name: vf.dims for vf in idx.spec.vector_fields}

    def record(i: int, camera: str = "ok") -> PhotoRecord:
        return PhotoRecord(id=f"r{i}", path=f"/nowhere/{i}.jpg", folder="/nowhere", filename=f"{i}.jpg",
                           content_hash="0" * 32, size_bytes=1, mtime_ns=1, camera=camera,
                           vectors={name: np.ones(d, dtype=np.float32) for name, d in dims.items()})

    records = [record(i) for i in range(10)]
    records[3] = record(3, camera="NUL\x00inside")
    records[7] = record(7, camera="lone \udcff surrogate")
    refused = _write_or_bisect(idx.store, records)
    assert set(refused) == {"r3", "r7"} and all("refused" in reason for reason in refused.values())
    assert idx.count() == 8


# -- Azure: search text on an index without a model is keywords --------------------------------------------------------
def test_search_text_with_a_vector_query_on_a_modelless_index_is_keywords_fused(admin, query):
    name = "kw-" + uuid.uuid4().hex[:6]
    definition = {"fields": [{"name": "title", "type": "string", "searchable": True}],
                  "vectorFields": [{"name": "v", "dimensions": 2}]}
    assert admin.put(f"/indexes/{name}", json=definition).status_code == 201
    docs = [{"id": "red", "title": "a red car", "v": [1.0, 0.0]}, {"id": "blue", "title": "blue sky", "v": [0.0, 1.0]}]
    assert admin.post(f"/indexes/{name}/docs/index", json={"value": docs}).status_code == 200
    r = query.post(f"/indexes/{name}/docs/search", json={
        "search": "red", "debug": "all", "vectorQueries": [{"kind": "vector", "vector": [0.0, 1.0], "fields": "v"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["@search.debug"]["mode"] == "hybrid"
    assert {h["id"] for h in body["value"]} == {"red", "blue"}
    assert set(body["value"][0]["@search.subscores"]) <= {"keyword", "vector_query_1"}
    keyword_only = query.post(f"/indexes/{name}/docs/search", json={"search": "red"}).json()
    assert [h["id"] for h in keyword_only["value"]] == ["red"]


# -- schemathesis: no input the OpenAPI allows gives a 5xx --------------------------------------------------------------
def _png(color=(200, 30, 30)) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(data, "PNG")
    return data.getvalue()


def _browse(top: int = 50):
    from pixsearch.search.request import SearchRequest

    return SearchRequest(top=top)

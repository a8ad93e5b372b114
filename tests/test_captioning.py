"""Generated captions through the product (service/captioning.py): `pixsearch index --captioner openai:MODEL`, the
caption cache, the generated fields, caption vectors, costs, and the hosted models' URL hook — against the loopback
services of tests/hosted_fakes.py, which check the requests themselves. The captioner's own requests and answers:
tests/test_captioner.py."""
from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from hosted_fakes import PALETTE, FakeService, Fault, colour_photos, image_vector, nearest_colour, text_vector
from pixsearch.config import Settings
from pixsearch.ingest import IngestOptions, ingest_paths
from pixsearch.ingest.descriptions import caption_text
from pixsearch.ingest.scan import photo_id
from pixsearch.models import load_embedder
from pixsearch.models.captioner import DEFAULT_PROMPT
from pixsearch.models.hosted import HostedOptions
from pixsearch.service import Engine, Query

KEY = "sk-" + uuid.uuid4().hex  # must never show: random, so no other text contains it
AZURE_KEY = "az-" + uuid.uuid4().hex
MODEL = "openai-embed:local-embed?dimensions=64"  # a caption-only index: photos are found by their captions
CAPTIONER = "openai:vision-model"


@pytest.fixture
def fake():
    with FakeService(openai_key=KEY, azure_key=AZURE_KEY) as service:
        yield service


def env(fake: FakeService, key: str = KEY) -> dict[str, str]:
    return {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": fake.url + "/v1"}


def engine_for(home: Path, fake: FakeService) -> Engine:
    return Engine(Settings.load(home=home, openai_api_key=KEY, openai_base_url=fake.url + "/v1"))


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def sent_image(request) -> Image.Image:
    url = request.json()["messages"][1]["content"][1]["image_url"]["url"]
    header, _, data = url.partition(",")
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def generated_of(colour: str) -> dict:
    """What the fake's captioner answers for a photo of that colour."""
    return {"generated_title": f"A {colour} square", "generated_description": f"A flat {colour} colour field.",
            "generated_keywords": [colour, "colour"]}


def docs_of(idx, paths) -> dict[str, dict]:
    """The stored documents of these photo files, by path."""
    found = idx.get([photo_id(p) for p in paths], vectors=False)
    return {doc["path"]: doc for doc in found.values()}


def database_text(engine: Engine, name: str) -> str:
    """Everything the database holds for the index, the registry and the caption cache, as text."""
    table = engine.index(name).spec.table_name
    with engine.db.connection() as conn:
        return "".join(str(conn.execute(query).fetchall()) for query in (
            f"SELECT t::text FROM {table} t", "SELECT t::text FROM pixsearch_indexes t",
            "SELECT t::text FROM pixsearch_generated_captions t"))


# -- through the CLI ------------------------------------------------------------------------------------------------


def test_captions_are_generated_stored_apart_searched_and_never_bought_twice(fake, home, tmp_path, caplog):
    photos = colour_photos(tmp_path / "p")
    Path(photos["red"] + ".txt").write_text("un cuadro")  # what a person wrote: kept apart from the generated one
    name = "cap-" + uuid.uuid4().hex[:6]
    r = run_cli("index", str(tmp_path / "p"), "--index", name, "--model", MODEL, "--captioner", CAPTIONER, "--json",
                home=home, env=env(fake))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["added"] == len(PALETTE) and report["failed"] == []
    assert {k: report["captions"][k] for k in ("captioner", "captioned", "requests", "cached", "prompt_tokens",
                                               "completion_tokens")} == {
        "captioner": CAPTIONER, "captioned": 5, "requests": 5, "cached": 0, "prompt_tokens": 500,
        "completion_tokens": 100}
    assert "generated captions (openai:vision-model): 5 captioned, 5 requests, 0 from the cache, 500 prompt + 100 " \
           "completion tokens" in r.stderr
    # the requests: one per photo, as documented, each carrying that photo downscaled
    chats = fake.requests_to("/v1/chat/completions")
    assert len(chats) == 5
    colours = []
    for request in chats:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.headers["content-type"] == "application/json"
        body = request.json()
        assert body["model"] == "vision-model" and body["messages"][0]["content"] == DEFAULT_PROMPT
        image = sent_image(request)
        assert image.format == "JPEG" and image.size == (64, 48)  # small photos are not upscaled
        colours.append(nearest_colour(tuple(np.asarray(image.convert("RGB"), np.float64).mean(axis=(0, 1)))))
    assert sorted(colours) == sorted(PALETTE)
    assert KEY not in r.stdout + r.stderr

    with engine_for(home, fake) as engine:
        idx = engine.index(name)
        vectors, keys = idx.all_vectors("caption")
        docs = idx.get(keys, vectors=False)
        stored = {doc["path"]: (doc, vector) for doc, vector in zip((docs[k] for k in keys), vectors)}
        assert set(stored) == set(photos.values())
        for colour, path in photos.items():
            doc, vector = stored[path]
            assert {k: doc[k] for k in generated_of(colour)} == generated_of(colour)
            assert doc["generated_by"] == CAPTIONER
            people = "un cuadro" if colour == "red" else None
            assert doc["description"] == people and doc["title"] is None  # never mixed with what people wrote
            # the caption vector is the embedding of people's caption followed by the generated one
            g = generated_of(colour)
            text = "\n".join(p for p in (people, caption_text(g["generated_title"], g["generated_description"],
                                                              g["generated_keywords"])) if p)
            np.testing.assert_allclose(vector, unit(text_vector(text, 64)), atol=1e-6)
        # found by text through the caption vectors, filtered and keyword-searched by the generated fields
        # ("rojo" is in no text: only the caption vectors, of "A red square...", find the red photo)
        assert Path(idx.search("rojo", k=5).hits[0].path).stem == "red"
        hits = idx.search("colour", k=5, filter="generated_keywords/any(k: k eq 'blue')").hits
        assert [Path(h.path).stem for h in hits] == ["blue"]
        hits = idx.search("colour", k=5, filter=f"generated_by eq '{CAPTIONER}'").hits
        assert len(hits) == 5
        assert [Path(h.path).stem for h in idx.search("yellow", k=5, mode="keyword").hits] == ["yellow"]
        assert idx.stats()["captions"] == {"captioner": CAPTIONER, "requests": 5, "cached": 0, "prompt_tokens": 500,
                                           "completion_tokens": 100}
        assert KEY not in database_text(engine, name)

    # a rerun, a moved photo, a changed sidecar: nothing bought again
    shutil.move(photos["green"], tmp_path / "p" / "renamed-green.png")
    Path(photos["blue"] + ".txt").write_text("the sea")
    r = run_cli("index", str(tmp_path / "p"), "--index", name, "--json", home=home, env=env(fake))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["moved"] == 1 and report["metadata_updated"] == 1
    assert report["captions"]["requests"] == 0 and len(fake.requests_to("/v1/chat/completions")) == 5
    with engine_for(home, fake) as engine:
        idx = engine.index(name)
        vectors, keys = idx.all_vectors("caption")
        docs = idx.get(keys, vectors=False)
        stored = {docs[k]["path"]: v for k, v in zip(keys, vectors)}
        moved = next(d for d in docs.values() if d["path"].endswith("renamed-green.png"))
        assert moved["generated_title"] == "A green square"
        g = generated_of("blue")
        np.testing.assert_allclose(  # people's new caption, and the generated one kept
            stored[photos["blue"]], unit(text_vector("the sea\n" + caption_text(
                g["generated_title"], g["generated_description"], g["generated_keywords"]), 64)), atol=1e-6)

    # another index over the same files with the same captioner: every caption from the cache
    other = name + "-2"
    r = run_cli("index", str(tmp_path / "p"), "--index", other, "--model", MODEL, "--captioner", CAPTIONER, "--json",
                home=home, env=env(fake))
    assert r.returncode == 0, r.stderr
    captions = json.loads(r.stdout)["captions"]
    assert (captions["requests"], captions["cached"], captions["captioned"]) == (0, 5, 5)
    assert len(fake.requests_to("/v1/chat/completions")) == 5
    r = run_cli("indexes", "list", "--json", home=home, env=env(fake))
    assert r.returncode == 0, r.stderr
    listed = {spec["name"]: spec["settings"] for spec in json.loads(r.stdout)}
    assert listed[name]["caption_usage"] == {"requests": 5, "prompt_tokens": 500, "completion_tokens": 100}
    assert listed[other]["caption_usage"] == {"cached": 5}
    assert listed[name]["captioner"] == {"name": CAPTIONER, "prompt": None}
    r = run_cli("stats", "--index", name, home=home, env=env(fake))
    assert "generated captions (openai:vision-model), so far: 5 requests, 0 from the cache, 500 prompt + 100 " \
           "completion tokens" in " ".join(r.stdout.split()), r.stdout + r.stderr  # (the console wraps lines)


def test_throttling_is_waited_out_and_a_refused_key_stops_the_run_before_any_photo_fails(fake, home, tmp_path):
    colour_photos(tmp_path / "p", names=("red", "blue"))
    name = "cap-" + uuid.uuid4().hex[:6]
    fake.faults = [Fault(429, {"Retry-After": "0"})]
    r = run_cli("index", str(tmp_path / "p"), "--index", name, "--model", MODEL, "--captioner", CAPTIONER, "--json",
                home=home, env=dict(env(fake), PIXSEARCH_HOSTED_CONCURRENCY="1"))
    assert r.returncode == 0, r.stderr
    throttled, *chats = fake.requests_to("/v1/chat/completions")
    assert len(chats) == 2 and throttled.body == chats[0].body  # the same request again, then the next photo
    assert json.loads(r.stdout)["captions"]["requests"] == 2  # what was billed: the 429 was not

    colour_photos(tmp_path / "q", names=("green", "yellow"))
    wrong = "sk-" + uuid.uuid4().hex
    before = len(fake.requests)
    r = run_cli("index", str(tmp_path / "q"), "--index", name + "-b", "--model", MODEL, "--captioner", CAPTIONER,
                "--json", home=home, env=env(fake, wrong))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused the key (HTTP 401" in r.stderr and "OPENAI_API_KEY" in r.stderr
    assert "failed" not in r.stderr and r.stdout == ""
    assert wrong not in r.stdout + r.stderr
    assert 1 <= len(fake.requests) - before <= 4  # one per request thread at most: the refusal is remembered
    with engine_for(home, fake) as engine:
        idx = engine.index(name + "-b")
        assert idx.count() == 2  # both photos indexed; only their captions are missing
        assert wrong not in database_text(engine, name + "-b")


# -- through Python ---------------------------------------------------------------------------------------------------


def test_python_api_remembers_the_captioner_and_keeps_refusals(fake, home, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    import pixsearch

    photos = colour_photos(tmp_path / "p", names=("red", "purple"))
    name = "cap-" + uuid.uuid4().hex[:6]
    with pixsearch.connect(home=home, openai_api_key=KEY, openai_base_url=fake.url + "/v1") as client:
        index = client.create_index(name, model=MODEL)
        index.add_images([tmp_path / "p"], captioner=CAPTIONER, caption_prompt="Short titles, please.")
        first = fake.requests_to("/v1/chat/completions")
        assert len(first) == 2 and first[0].json()["messages"][0]["content"] == "Short titles, please."
        # an answer that is no caption is bought once and kept as such
        fake.caption_reply = "I cannot help with that."
        extra = colour_photos(tmp_path / "p", names=("yellow",))
        index.add_images([tmp_path / "p"])  # remembered: captioned without being asked again
        assert len(fake.requests_to("/v1/chat/completions")) == 3
        index.add_images([tmp_path / "p"])
        assert len(fake.requests_to("/v1/chat/completions")) == 3
        index.add_images([tmp_path / "p"], captioner=False)
    with engine_for(home, fake) as engine:
        idx = engine.index(name)
        assert "captioner" not in idx.spec.settings
        assert idx.spec.settings["caption_usage"]["requests"] == 3
        docs = docs_of(idx, [*photos.values(), *extra.values()])
        assert docs[extra["yellow"]]["generated_title"] is None
        assert docs[photos["red"]]["generated_title"] == "A red square"
    assert KEY not in caplog.text


# -- the URL hook: a photo the service fetches itself -----------------------------------------------------------------


def test_hosted_models_fetch_a_photo_by_url_when_it_has_one(fake, home, tmp_path):
    """A local photo given an http URL (as an object-store photo gets a SAS URL): Azure AI Vision is sent the URL,
    not the bytes, and fetches it; the photo gets exactly the service's vector of what it fetched."""
    photos = colour_photos(tmp_path / "p", names=("red", "blue"))
    for colour, path in photos.items():
        fake.files[f"{colour}.png"] = Path(path).read_bytes()
    urls = {path: f"{fake.url}/files/{Path(path).name}?sig=secret-{colour}" for colour, path in photos.items()}
    embedder = load_embedder(f"azure-vision:{fake.url}", hosted=HostedOptions(azure_vision_key=AZURE_KEY))
    name = "url-" + uuid.uuid4().hex[:6]
    with Engine(Settings.load(home=home, azure_vision_key=AZURE_KEY, openai_api_key=KEY,
                              openai_base_url=fake.url + "/v1")) as engine:
        idx = engine.index(name, create=True, model=f"azure-vision:{fake.url}")
        report = ingest_paths(idx.store, embedder, [tmp_path / "p"], IngestOptions(photo_url=urls.get),
                              columns=idx.model().columns)
        assert report.added == 2 and not report.failed
        sent = fake.requests_to("vectorizeImage")
        assert sorted(r.json()["url"] for r in sent) == sorted(urls.values())
        assert all(r.headers["content-type"] == "application/json" for r in sent)
        assert sorted(fake.fetched) == sorted(urls.values())
        vectors, keys = idx.all_vectors("azure_vision")
        paths = {k: d["path"] for k, d in idx.get(keys, vectors=False).items()}
        for key, vector in zip(keys, vectors):
            np.testing.assert_allclose(vector, unit(image_vector(Path(paths[key]).stem)), atol=1e-6)
        # the captioner too
        idx.set_captioner(CAPTIONER)
        run = idx.caption(photo_url=urls.get)
        assert run.captioned == 2
        chats = fake.requests_to("/v1/chat/completions")
        assert sorted(r.json()["messages"][1]["content"][1]["image_url"]["url"] for r in chats) == sorted(urls.values())


# -- image queries on a text-only index ---------------------------------------------------------------------------------


def test_an_image_query_on_a_text_only_index_is_a_clear_error(fake, home, tmp_path):
    from pixsearch.api import create_app
    from pixsearch.api.server import serving_in_thread
    import httpx

    photos = colour_photos(tmp_path / "p", names=("red",))
    Path(photos["red"] + ".txt").write_text("rojo")
    name = "txt-" + uuid.uuid4().hex[:6]
    r = run_cli("index", str(tmp_path / "p"), "--index", name, "--model", MODEL, home=home, env=env(fake))
    assert r.returncode == 0, r.stderr
    r = run_cli("search", "--image", photos["red"], "--index", name, home=home, env=env(fake))
    assert r.returncode == 1 and "a text model" in r.stderr and "search it with text" in r.stderr, r.stderr
    with engine_for(home, fake) as engine:
        idx = engine.index(name)
        with pytest.raises(ValueError, match="a text model"):
            idx.search(Query(image=photos["red"]))
        with serving_in_thread(create_app(engine, query_keys=["q-key"])) as url:
            answer = httpx.post(f"{url}/indexes/{name}/images/search", headers={"api-key": "q-key"},
                                files={"image": ("q.png", Path(photos["red"]).read_bytes(), "image/png")})
        assert answer.status_code == 400 and "a text model" in answer.json()["error"]["message"], answer.text


# -- the page -----------------------------------------------------------------------------------------------------------


def test_the_page_marks_generated_captions(fake, home, tmp_path):
    """A photo captioned by a person shows that caption plainly; one captioned by the model shows its title with a
    "generated" badge."""
    pytest.importorskip("playwright.sync_api")
    from helpers import chromium_browser
    from pixsearch.api import create_app
    from pixsearch.api.server import serving_in_thread

    photos = colour_photos(tmp_path / "p", names=("red", "blue"))
    Path(photos["red"] + ".xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/"><rdf:Description><dc:title><rdf:Alt><rdf:li xml:lang="x-default">'
        'Sunset at the harbour</rdf:li></rdf:Alt></dc:title></rdf:Description></rdf:RDF></x:xmpmeta>')
    name = "web-cap-" + uuid.uuid4().hex[:6]
    with engine_for(home, fake) as engine:
        engine.index(name, create=True, model=MODEL).add_paths([tmp_path / "p"], captioner=CAPTIONER)
        with serving_in_thread(create_app(engine, query_keys=["q-key"], page_index=name)) as url, \
                chromium_browser() as browser:
            page = browser.new_context(bypass_csp=True).new_page()  # (Playwright's predicates need eval)
            page.goto(f"{url}/#key=q-key")
            page.wait_for_function("document.querySelectorAll('#results li .described').length === 2", timeout=60_000)
            lines = {item.get_attribute("data-path"): (item.locator(".described-text").text_content(),
                                                       item.locator(".generated").count())
                     for item in page.locator("#results li").all()}
            assert lines == {photos["red"]: ("Sunset at the harbour", 0), photos["blue"]: ("A blue square", 1)}
            badge = page.locator("#results li .generated")
            assert badge.text_content() == "generated" and CAPTIONER in badge.get_attribute("title")

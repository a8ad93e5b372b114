"""Hosted models (Azure AI Vision multimodal embeddings, OpenAI-compatible /embeddings) against loopback servers
that implement the services' documented shapes (tests/hosted_fakes.py) and check every request pixsearch sends.

What is ours to test: every photo gets exactly the service's vector, every query the service's text vector, ranking
is by them; the requests are what the documentation says; throttling, outages, timeouts and refused keys are
handled; images are fitted to the service's limits before sending; the key never shows anywhere.
"""
from __future__ import annotations

import io
import json
import logging
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from hosted_fakes import PALETTE, FakeService, Fault, colour_photos, image_vector, text_vector
from pixsearch.config import Settings
from pixsearch.models import ModelNotAvailableError, load_embedder, model_capabilities
from pixsearch.models.azure_vision import LIMITS
from pixsearch.models.hosted import (HostedOptions, InputRefused, ServiceAuthError, ServiceError,
                                      ServiceUnavailable)
from pixsearch.service import Engine

AZURE_KEY = "az-" + uuid.uuid4().hex  # a key that must never show: random, so no other text contains it
OPENAI_KEY = "sk-" + uuid.uuid4().hex


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def fake():
    with FakeService(azure_key=AZURE_KEY, openai_key=OPENAI_KEY) as service:
        yield service


def azure(fake: FakeService, key: str = AZURE_KEY, **options):
    return load_embedder(f"azure-vision:{fake.url}", hosted=HostedOptions(azure_vision_key=key, **options))


def _db_dump(engine: Engine) -> str:
    with engine.db.connection() as conn:
        return repr(conn.execute("SELECT * FROM pixsearch_indexes").fetchall())


# -- Azure AI Vision: the requests -----------------------------------------------------------------------------------


def test_azure_vectorizes_images_and_texts_as_documented(fake):
    emb = azure(fake)
    assert emb.spaces["azure_vision"].dims == 1024 and emb.text_space == emb.image_space == "azure_vision"
    assert emb.model_id == "azure-vision:multimodal-embeddings@2023-04-15"
    image = Image.new("RGB", (300, 200), PALETTE["blue"])
    got_image = emb.embed_images([emb.prepare_image(image)]).vectors["azure_vision"]
    got_texts = emb.embed_texts(["rojo", "", "a " * 100 + "green"])

    image_req, *text_reqs = fake.requests
    assert image_req.path == "/computervision/retrieval:vectorizeImage"
    for r in fake.requests:
        assert r.query == {"api-version": ["2024-02-01"], "model-version": ["2023-04-15"]}
        assert r.headers["ocp-apim-subscription-key"] == AZURE_KEY
        assert "authorization" not in r.headers
    assert image_req.headers["content-type"] == "application/octet-stream"
    sent = Image.open(io.BytesIO(image_req.body))
    assert sent.format == "JPEG" and sent.size == (300, 200)
    # the empty text is a zero row and is not sent; the long one is cut at the service's 70 words
    assert [r.path for r in text_reqs] == ["/computervision/retrieval:vectorizeText"] * 2
    assert all(r.headers["content-type"] == "application/json" for r in text_reqs)
    assert sorted(len(r.json()["text"].split()) for r in text_reqs) == [1, 70]
    np.testing.assert_allclose(got_image[0], unit(image_vector("blue")), atol=1e-6)
    np.testing.assert_allclose(got_texts[0], unit(text_vector("rojo")), atol=1e-6)
    assert not got_texts[1].any()
    assert emb.requests_sent == 3


def test_an_answer_of_another_model_version_is_refused(fake):
    fake.answer_version = "2022-04-11"  # vectors of another model than the one asked for: not comparable
    with pytest.raises(ServiceError, match="model version '2022-04-11', not the index's '2023-04-15'"):
        azure(fake).embed_texts(["red"])


def test_model_version_and_api_version_from_the_name(fake):
    fake.model_version = "2022-04-11"
    emb = load_embedder(f"azure-vision:{fake.url}/?model-version=2022-04-11",
                        hosted=HostedOptions(azure_vision_key=AZURE_KEY))
    assert emb.name == f"azure-vision:{fake.url}?model-version=2022-04-11"  # what the index records
    assert emb.model_id == "azure-vision:multimodal-embeddings@2022-04-11"
    emb.embed_texts(["red"])
    assert fake.requests[-1].query["model-version"] == ["2022-04-11"]


@pytest.mark.parametrize("name, message", [
    ("azure-vision:http://vision.example.com", "use https"),
    ("azure-vision:https://x.cognitiveservices.azure.com/computervision", "endpoint only"),
    ("azure-vision:https://x.cognitiveservices.azure.com?model=1", "unknown parameter"),
    ("azure-vision:https://user:pw@x.cognitiveservices.azure.com", "credentials"),
    ("openai-embed:my-local-model", "dimensions=N"),
    ("openai-embed:m?dims=3", "unknown parameter"),
])
def test_bad_names_are_refused_before_anything_is_sent(name, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        model_capabilities(name, tmp_path)


def test_a_missing_key_is_one_clear_error(fake, monkeypatch):
    monkeypatch.delenv("AZURE_AI_VISION_KEY", raising=False)
    with pytest.raises(ModelNotAvailableError, match="AZURE_AI_VISION_KEY"):
        load_embedder(f"azure-vision:{fake.url}", hosted=HostedOptions.from_environment())
    assert fake.requests == []


# -- Azure AI Vision: throttling, outages, timeouts, refused keys ----------------------------------------------------


def test_throttled_request_waits_for_retry_after_then_succeeds(fake):
    fake.faults = [Fault(429, {"Retry-After": "1"})]
    emb = azure(fake, backoff_s=0.01)
    vector = emb.embed_texts(["azul"])[0]
    np.testing.assert_allclose(vector, unit(text_vector("azul")), atol=1e-6)
    first, second = fake.requests
    assert first.body == second.body
    # Retry-After is a floor the client must keep (a lower bound: it cannot flake); its own backoff is 0.01 s
    assert second.arrived - first.arrived >= 0.95


def test_server_errors_are_retried_then_give_up(fake, caplog):
    caplog.set_level(logging.DEBUG)  # httpx's and httpcore's debug lines included
    fake.faults = [Fault(503), Fault(500)]
    emb = azure(fake, backoff_s=0.01, max_retries=2)
    np.testing.assert_allclose(emb.embed_texts(["verde"])[0], unit(text_vector("verde")), atol=1e-6)
    assert len(fake.requests) == 3
    fake.faults = [Fault(502)] * 3
    with pytest.raises(ServiceUnavailable, match="failed 3 times in a row, last: HTTP 502"):
        emb.embed_texts(["verde"])
    assert len(fake.requests) == 6
    assert "retrying" in caplog.text and AZURE_KEY not in caplog.text


def test_a_timeout_is_retried(fake):
    fake.faults = [Fault(200, delay=1.5)]
    emb = azure(fake, timeout_s=0.3, backoff_s=0.01)
    np.testing.assert_allclose(emb.embed_texts(["blau"])[0], unit(text_vector("blau")), atol=1e-6)
    assert len(fake.requests) == 2


def test_a_refused_key_is_remembered_and_never_shown(fake, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + uuid.uuid4().hex
    # a service that echoes the key it was given: the message still must not carry it
    fake.faults = [Fault(401, body={"error": {"code": "401", "message": f"key {wrong} is not valid"}})]
    emb = azure(fake, key=wrong)
    with pytest.raises(ServiceAuthError) as caught:
        emb.embed_texts(["red"])
    assert "refused the key (HTTP 401" in str(caught.value) and "AZURE_AI_VISION_KEY" in str(caught.value)
    with pytest.raises(ServiceAuthError):
        emb.prepare_image(Image.new("RGB", (50, 50), PALETTE["red"]))
    assert len(fake.requests) == 1  # the second call sent nothing
    assert wrong not in str(caught.value) and wrong not in caplog.text and wrong not in repr(emb.client.options)


# -- Azure AI Vision: the service's image limits ---------------------------------------------------------------------


def test_images_are_fitted_to_the_limits_or_fail_alone(fake):
    emb = azure(fake)
    panorama = Image.new("RGB", (16_500, 40), PALETTE["green"])  # longer than 16,000 px
    np.testing.assert_allclose(emb.prepare_image(panorama).vector, image_vector("green"), atol=1e-5)
    sent = Image.open(io.BytesIO(fake.requests[-1].body))
    assert 10 < min(sent.size) and max(sent.size) < 16_000
    with pytest.raises(InputRefused, match="at least 11 px"):
        emb.prepare_image(Image.new("RGB", (6, 40), PALETTE["red"]))
    with pytest.raises(InputRefused, match="no size keeps both sides"):  # 17,000 px long, 11 px high: no fit
        emb.prepare_image(Image.new("RGB", (17_000, 11), PALETTE["red"]))
    assert len(fake.requests) == 1  # neither the tiny one nor the sliver was sent
    # a file over the byte limit is recompressed until it fits (a small limit here, the same loop as 20 MB)
    emb.limits = replace(LIMITS, max_bytes=40_000)
    fake.max_image_bytes = 40_001
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (900, 900, 3), dtype=np.uint8))
    emb.prepare_image(noise)
    assert len(fake.requests[-1].body) <= 40_000 and len(fake.requests) == 2


# -- Azure AI Vision: through the product ----------------------------------------------------------------------------


def test_index_and_search_through_azure_vision(fake, home, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    photos = colour_photos(tmp_path / "paintings")
    (tmp_path / "paintings" / "tiny.png").write_bytes(_png(Image.new("RGB", (5, 5), PALETTE["red"])))
    name = "azure-" + uuid.uuid4().hex[:6]
    fake.faults = [Fault(429, {"Retry-After": "0"}), Fault(503)]
    r = run_cli("index", str(tmp_path / "paintings"), "--index", name, "--model", f"azure-vision:{fake.url}",
                "--json", home=home, env={"AZURE_AI_VISION_KEY": AZURE_KEY})
    assert r.returncode == 3, r.stderr  # the tiny image failed on its own; the rest is indexed
    report = json.loads(r.stdout)
    assert report["added"] == len(PALETTE)
    assert [f["path"].endswith("tiny.png") for f in report["failed"]] == [True]
    assert "needs at least 11 px" in report["failed"][0]["reason"]
    assert AZURE_KEY not in r.stdout + r.stderr
    assert len(fake.requests_to("vectorizeImage")) == len(PALETTE) + 2  # one each, plus the 429 and the 503 retried

    settings = Settings.load(home=home, azure_vision_key=AZURE_KEY)
    with Engine(settings) as engine:
        idx = engine.index(name)
        assert idx.spec.model == f"azure-vision:{fake.url}"
        vectors, keys = idx.all_vectors("azure_vision")
        stored = dict(zip(keys, vectors))
        # every photo holds exactly the service's vector for it
        for colour, path in photos.items():
            key = next(k for k in keys if _path_of(idx, k) == path)
            np.testing.assert_allclose(stored[key], unit(image_vector(colour)), atol=1e-6)
        # every query is the service's text vector; ranking is by them, in any of its languages
        for query in ("rojo", "blue", "grün"):
            sent_before = len(fake.requests_to("vectorizeText"))
            hits = idx.search(query, k=10, mode="vector").hits
            want = sorted(photos, key=lambda c: -float(unit(text_vector(query)) @ unit(image_vector(c))))
            assert [Path(h.path).stem for h in hits] == want
            assert fake.requests_to("vectorizeText")[-1].json() == {"text": query}
            assert len(fake.requests_to("vectorizeText")) == sent_before + 1
            idx.search(query, k=10, mode="vector")  # again, and a second page: the cached query vector
            idx.search(query, k=2, mode="vector")
            assert len(fake.requests_to("vectorizeText")) == sent_before + 1
        assert AZURE_KEY not in _db_dump(engine)
    assert AZURE_KEY not in caplog.text


def test_a_refused_key_stops_the_run_before_any_photo_is_marked_failed(fake, home, tmp_path):
    colour_photos(tmp_path / "p")
    wrong = "wrong-" + uuid.uuid4().hex
    name = "azure-" + uuid.uuid4().hex[:6]
    r = run_cli("index", str(tmp_path / "p"), "--index", name, "--model", f"azure-vision:{fake.url}", "--json",
                home=home, env={"AZURE_AI_VISION_KEY": wrong})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Azure AI Vision refused the key (HTTP 401" in r.stderr
    assert "failed" not in r.stderr.replace("refused", "") and r.stdout == ""
    assert wrong not in r.stdout + r.stderr
    assert 1 <= len(fake.requests) <= 2  # one per decode thread at most: the refusal is remembered
    with Engine(Settings.load(home=home, azure_vision_key=AZURE_KEY)) as engine:
        assert engine.index(name).count() == 0


def test_dry_run_counts_the_requests_and_sends_nothing(fake, home, tmp_path):
    photos = colour_photos(tmp_path / "p")
    Path(photos["red"] + ".txt").write_text("a red field, by a painter")
    Path(photos["blue"] + ".txt").write_text("blue")
    name = "dry-" + uuid.uuid4().hex[:6]
    r = run_cli("index", str(tmp_path / "p"), "--index", name, "--model", f"azure-vision:{fake.url}", "--dry-run",
                "--json", home=home, env={"AZURE_AI_VISION_KEY": AZURE_KEY})
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert (plan["to_embed"], plan["captions"], plan["requests"], plan["exists"]) == (5, 2, 7, False)
    assert plan["service"] == fake.url.removeprefix("http://")
    assert fake.requests == []
    with Engine(Settings.load(home=home)) as engine:
        assert name not in {spec.name for spec in engine.list_indexes()}
    # after a real run, nothing is left to send
    r = run_cli("index", str(tmp_path / "p"), "--index", name, "--model", f"azure-vision:{fake.url}", home=home,
                env={"AZURE_AI_VISION_KEY": AZURE_KEY})
    assert r.returncode == 0, r.stderr
    assert len(fake.requests) == 7
    r = run_cli("index", str(tmp_path / "p"), "--index", name, "--dry-run", "--json", home=home,
                env={"AZURE_AI_VISION_KEY": AZURE_KEY})
    assert json.loads(r.stdout)["requests"] == 0 and json.loads(r.stdout)["unchanged"] == 5


# -- OpenAI-compatible embeddings: caption-only indexes --------------------------------------------------------------


def test_openai_embeddings_requests(fake):
    emb = load_embedder("openai-embed:local-embed?dimensions=64",
                        hosted=HostedOptions(openai_api_key=OPENAI_KEY, openai_base_url=fake.url + "/v1"))
    assert emb.text_space == "text" and emb.spaces["text"].dims == 64
    got = emb.embed_texts(["rojo", "", "un azul"])
    (req,) = fake.requests
    assert req.path == "/v1/embeddings" and req.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert req.headers["content-type"] == "application/json"
    assert req.json() == {"model": "local-embed", "input": ["rojo", "un azul"], "encoding_format": "float"}
    np.testing.assert_allclose(got[0], unit(text_vector("rojo", 64)), atol=1e-6)
    np.testing.assert_allclose(got[2], unit(text_vector("un azul", 64)), atol=1e-6)  # answered out of order
    assert not got[1].any()
    assert emb.embed_images([emb.prepare_image(Image.new("RGB", (20, 20)))]).vectors == {}
    assert len(fake.requests) == 1  # photos themselves are never sent
    small = load_embedder("openai-embed:text-embedding-3-small?dimensions=64",
                          hosted=HostedOptions(openai_api_key=OPENAI_KEY, openai_base_url=fake.url + "/v1"))
    small.embed_texts(["red"])
    assert fake.requests[-1].json()["dimensions"] == 64  # text-embedding-3 models shorten on request


def test_caption_only_index_through_openai_embeddings(fake, home, tmp_path):
    photos = colour_photos(tmp_path / "p")
    captions = {"red": "un cuadro rojo", "green": "a green meadow", "blue": "the blue sea"}
    for colour, caption in captions.items():
        Path(photos[colour] + ".txt").write_text(caption)
    name = "oai-" + uuid.uuid4().hex[:6]
    model = "openai-embed:local-embed?dimensions=64"
    env = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": fake.url + "/v1"}
    r = run_cli("index", str(tmp_path / "p"), "--index", name, "--model", model, "--json", home=home, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == len(PALETTE)
    assert OPENAI_KEY not in r.stdout + r.stderr
    (batch,) = fake.requests_to("/v1/embeddings")  # the three captions in one request, no photo sent
    assert sorted(batch.json()["input"]) == sorted(captions.values())
    with Engine(Settings.load(home=home, openai_api_key=OPENAI_KEY, openai_base_url=fake.url + "/v1")) as engine:
        idx = engine.index(name)
        vectors, keys = idx.all_vectors("caption")
        by_path = {_path_of(idx, k): v for k, v in zip(keys, vectors)}
        assert set(by_path) == {photos[c] for c in captions}
        for colour, caption in captions.items():
            np.testing.assert_allclose(by_path[photos[colour]], unit(text_vector(caption, 64)), atol=1e-6)
        hits = idx.search("rojo", k=3).hits
        assert Path(hits[0].path).stem == "red"
        sent = len(fake.requests)
        idx.search("rojo", k=3)
        assert len(fake.requests) == sent  # the query vector is cached
        assert OPENAI_KEY not in _db_dump(engine)


# -- helpers ---------------------------------------------------------------------------------------------------------


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _path_of(idx, key: str) -> str:
    return idx.get([key], vectors=False)[key]["path"]

"""Generated captions from a vision LLM over the OpenAI chat-completions API (models/captioner.py), against a loopback
server that implements the documented request and answer shapes and checks what is sent."""
from __future__ import annotations

import base64
import io
import json
import logging
import uuid

import pytest
from PIL import Image

from hosted_fakes import PALETTE, FakeService, Fault
from pixsearch.models import ModelNotAvailableError
from pixsearch.models.captioner import CaptionError, DEFAULT_PROMPT, SCHEMA, load_captioner
from pixsearch.models.hosted import HostedOptions, ServiceAuthError

KEY = "sk-" + uuid.uuid4().hex


@pytest.fixture
def fake():
    with FakeService(openai_key=KEY) as service:
        yield service


def captioner(fake, tmp_path, key=KEY, **kwargs):
    return load_captioner("openai:vision-model", tmp_path / "cache",
                          hosted=HostedOptions(openai_api_key=key, openai_base_url=fake.url + "/v1", backoff_s=0.01),
                          **kwargs)


def test_the_request_and_the_caption(fake, tmp_path):
    cap = captioner(fake, tmp_path)
    caption = cap.caption(Image.new("RGB", (2000, 1500), PALETTE["purple"]), "hash-1")
    assert caption.title == "A purple square" and caption.description == "A flat purple colour field."
    assert caption.keywords == ("purple", "colour")
    (req,) = fake.requests
    assert req.path == "/v1/chat/completions" and req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"] == "application/json"
    body = req.json()
    assert body["model"] == "vision-model"
    assert body["messages"][0] == {"role": "system", "content": DEFAULT_PROMPT}
    text, image = body["messages"][1]["content"]
    assert text["type"] == "text" and image["type"] == "image_url"
    sent = Image.open(io.BytesIO(base64.b64decode(image["image_url"]["url"].split(",", 1)[1])))
    assert sent.format == "JPEG" and max(sent.size) == 1024  # scaled down before leaving the machine
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "caption", "strict": True, "schema": SCHEMA}}
    assert cap.usage.to_json() == {"requests": 1, "cached": 0, "prompt_tokens": 100, "completion_tokens": 20}


def test_captions_are_cached_by_content_hash(fake, tmp_path):
    red = Image.new("RGB", (64, 64), PALETTE["red"])
    first = captioner(fake, tmp_path).caption(red, "hash-red")
    again = captioner(fake, tmp_path)  # a new process: the cache is on disk
    assert again.caption(Image.new("RGB", (64, 64), PALETTE["blue"]), "hash-red") == first  # same bytes, by hash
    assert len(fake.requests) == 1 and again.usage.cached == 1 and again.usage.requests == 0
    other_prompt = captioner(fake, tmp_path, prompt="Titles in French, please.")
    other_prompt.caption(red, "hash-red")
    assert len(fake.requests) == 2  # another prompt is another caption
    cache_text = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert KEY not in cache_text and "A red square" in cache_text


@pytest.mark.parametrize("reply, expected", [
    ('```json\n{"title": "T", "description": "D", "keywords": ["a", "A", "b"]}\n```', ("T", "D", ("a", "b"))),
    (json.dumps({"title": "x\x00y  z", "description": None, "keywords": "one, two"}), ("x y z", None, ("one", "two"))),
])
def test_answers_are_untrusted_text(fake, tmp_path, reply, expected):
    fake.caption_reply = reply
    caption = captioner(fake, tmp_path).caption(Image.new("RGB", (32, 32)), "h")
    assert (caption.title, caption.description, caption.keywords) == expected


def test_an_answer_that_is_no_caption_fails_that_photo_only(fake, tmp_path):
    fake.caption_reply = "I cannot help with that."
    cap = captioner(fake, tmp_path)
    results = cap.caption_many([Image.new("RGB", (32, 32))] * 2, ["h1", "h2"])
    assert all(isinstance(r, CaptionError) for r in results)
    assert "not the JSON asked for" in str(results[0])
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing cached: a later run asks again


def test_throttling_and_a_refused_key(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake.faults = [Fault(429, {"Retry-After": "0"}), Fault(500)]
    assert captioner(fake, tmp_path).caption(Image.new("RGB", (32, 32), PALETTE["green"]), "g").title == \
        "A green square"
    assert len(fake.requests) == 3
    wrong = "sk-" + uuid.uuid4().hex
    with pytest.raises(ServiceAuthError) as caught:
        captioner(fake, tmp_path, key=wrong).caption(Image.new("RGB", (32, 32)), "other")
    assert "OPENAI_API_KEY" in str(caught.value)
    assert wrong not in str(caught.value) + caplog.text and KEY not in caplog.text


def test_a_local_server_without_a_key(tmp_path):
    with FakeService(openai_key=None) as local:
        cap = load_captioner("openai:llava", tmp_path, hosted=HostedOptions(openai_base_url=local.url + "/v1"))
        cap.caption(Image.new("RGB", (32, 32), PALETTE["yellow"]), "y")
        assert "authorization" not in local.requests[0].headers


def test_names(tmp_path):
    with pytest.raises(ValueError, match="openai:MODEL"):
        load_captioner("llava", tmp_path)
    with pytest.raises(ModelNotAvailableError, match="needs a key"):  # api.openai.com without a key: said before any request
        load_captioner("openai:gpt-4o-mini", tmp_path, hosted=HostedOptions())

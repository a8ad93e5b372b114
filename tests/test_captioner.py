"""Generated captions from a vision LLM over the OpenAI chat-completions API (models/captioner.py), against a loopback
server that implements the documented request and answer shapes and checks what is sent. Through the product
(ingest, the cache, search): tests/test_captioning.py."""
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
from pixsearch.models.hosted import HostedOptions, ImageAtURL, ServiceAuthError

KEY = "sk-" + uuid.uuid4().hex


@pytest.fixture
def fake():
    with FakeService(openai_key=KEY) as service:
        yield service


def captioner(fake, key=KEY, **kwargs):
    return load_captioner("openai:vision-model",
                          hosted=HostedOptions(openai_api_key=key, openai_base_url=fake.url + "/v1", backoff_s=0.01),
                          **kwargs)


def test_the_request_and_the_caption(fake):
    cap = captioner(fake)
    caption, cost = cap.caption(Image.new("RGB", (2000, 1500), PALETTE["purple"]))
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
    assert sent.format == "JPEG" and sent.size == (1024, 768)  # scaled down before leaving the machine
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "caption", "strict": True, "schema": SCHEMA}}
    assert cost.to_json() == {"requests": 1, "cached": 0, "prompt_tokens": 100, "completion_tokens": 20}
    assert cap.usage.to_json() == cost.to_json()


def test_a_photo_the_service_can_fetch_is_sent_as_its_url(fake):
    cap = captioner(fake)
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), PALETTE["red"]).save(buffer, format="PNG")
    fake.files["red.png"] = buffer.getvalue()
    url = f"{fake.url}/files/red.png?sv=2024&sig=abc"
    caption, _ = cap.caption(ImageAtURL(url))
    assert caption.title == "A red square"  # the service fetched the photo: no bytes of it were sent
    (req,) = fake.requests
    assert req.json()["messages"][1]["content"][1] == {"type": "image_url", "image_url": {"url": url}}
    assert fake.fetched == [url]


def test_settings_id_names_model_prompt_and_server(fake):
    a, b = captioner(fake), captioner(fake, prompt="Titles in French, please.")
    assert a.settings_id != b.settings_id and a.settings_id == captioner(fake, key="other").settings_id
    assert KEY not in a.settings_id


@pytest.mark.parametrize("reply, expected", [
    ('```json\n{"title": "T", "description": "D", "keywords": ["a", "A", "b"]}\n```', ("T", "D", ("a", "b"))),
    (json.dumps({"title": "x\x00y  z", "description": None, "keywords": "one, two"}), ("x y z", None, ("one", "two"))),
])
def test_answers_are_untrusted_text(fake, reply, expected):
    fake.caption_reply = reply
    caption, _ = captioner(fake).caption(Image.new("RGB", (32, 32)))
    assert (caption.title, caption.description, caption.keywords) == expected


def test_an_answer_that_is_no_caption_is_an_error_with_its_cost(fake):
    fake.caption_reply = "I cannot help with that."
    with pytest.raises(CaptionError, match="not the JSON asked for") as caught:
        captioner(fake).caption(Image.new("RGB", (32, 32)))
    assert caught.value.usage.requests == 1 and caught.value.usage.prompt_tokens == 100  # bought all the same


def test_throttling_and_a_refused_key(fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.faults = [Fault(429, {"Retry-After": "0"}), Fault(500)]
    caption, _ = captioner(fake).caption(Image.new("RGB", (32, 32), PALETTE["green"]))
    assert caption.title == "A green square"
    assert len(fake.requests) == 3
    wrong = "sk-" + uuid.uuid4().hex
    with pytest.raises(ServiceAuthError) as caught:
        captioner(fake, key=wrong).caption(Image.new("RGB", (32, 32)))
    assert "OPENAI_API_KEY" in str(caught.value)
    assert wrong not in str(caught.value) + caplog.text and KEY not in caplog.text


def test_a_local_server_without_a_key():
    with FakeService(openai_key=None) as local:
        cap = load_captioner("openai:llava", hosted=HostedOptions(openai_base_url=local.url + "/v1"))
        cap.caption(Image.new("RGB", (32, 32), PALETTE["yellow"]))
        assert "authorization" not in local.requests[0].headers


def test_names():
    with pytest.raises(ValueError, match="openai:MODEL"):
        load_captioner("llava")
    with pytest.raises(ModelNotAvailableError, match="needs a key"):  # api.openai.com without a key: said before any request
        load_captioner("openai:gpt-4o-mini", hosted=HostedOptions())

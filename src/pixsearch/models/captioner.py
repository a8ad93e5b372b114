"""Captions written by a vision LLM over the OpenAI chat-completions API (`--captioner openai:MODEL`): a title, a
description and keywords per photo, kept apart from what people wrote.

    POST {OPENAI_BASE_URL or https://api.openai.com/v1}/chat/completions
         Authorization: Bearer OPENAI_API_KEY (none for a local server without one)
         {"model": MODEL,
          "messages": [{"role": "system", "content": PROMPT},
                       {"role": "user", "content": [{"type": "text", "text": ...},
                                                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}]}],
          "response_format": {"type": "json_schema", "json_schema": {"name": "caption", "strict": true, "schema": ...}}}
      -> {"choices": [{"message": {"content": "{\"title\": ..., \"description\": ..., \"keywords\": [...]}"}}],
          "usage": {"prompt_tokens": ..., "completion_tokens": ...}}

OpenAI, Azure OpenAI and local servers speaking the API (Ollama, vLLM, llama.cpp's server) answer it. The image is
sent as a JPEG of at most SEND_SIDE px a side (decoded at CAPTION_DRAFT: JPEGs at the smallest DCT scale keeping
both sides >= 768 px, so nothing is upscaled to 1024 and a 12 MP photo decodes at 1/2 scale), or, for a photo the
service can fetch itself (an object-store photo with a SAS URL), as that URL. It leaves the machine, so captioning is
opt-in, never a default.

This module buys captions; it keeps none. The index's side (service/captioning.py) keeps them by content hash and
`settings_id` (the model, prompt and server) in the database (store/generated.py): a photo is never captioned twice
for the same settings, and a moved or re-indexed photo, or another index over the same files, keeps its caption
without a request. The answer is untrusted text: cut to the caption limits, control characters removed.
Rate limit, retries, concurrency and keys: hosted.py. `usage` counts requests, cache hits and tokens (the API's
`usage`), for the cost a run shows.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .hosted import HostedOptions, ImageAtURL, ImageLimits, encode_for_service
from .openai_embed import openai_client

SERVICE = "the OpenAI-compatible chat endpoint"
SEND_SIDE = 1024  # OpenAI's "high" detail tiles 512 px squares of an image fitted to 2048 x 768; 1024 keeps it cheap
CAPTION_DRAFT = (768, 768)  # what a JPEG is decoded at for captioning (ingest's own draft, 320 px, is too small)
LIMITS = ImageLimits(min_side=8, max_side=8192, max_bytes=20_000_000 - 1, send_side=SEND_SIDE, quality=85)
MAX_TITLE_CHARS, MAX_DESCRIPTION_CHARS, MAX_KEYWORD_CHARS, MAX_KEYWORDS = 256, 4000, 100, 30
DEFAULT_PROMPT = (
    "You write captions for a photo library so people can find photos by searching. Look at the image and answer "
    "with JSON only: a short title (at most 10 words), a description of one to three sentences saying what is "
    "shown (subjects, setting, notable objects, text visible in the image), and 5 to 15 keywords a person might "
    "search for. Describe only what is visible; do not guess names of people."
)
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "description": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "description", "keywords"],
    "additionalProperties": False,
}
SETTINGS_VERSION = 1  # part of settings_id: a change in what is asked makes every caption a new one
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class CaptionError(ValueError):
    """The model's answer was not a caption (no JSON, a refusal): this photo has no generated caption. `usage`:
    what the answer cost (it was bought, and is kept as a refusal so it is not bought again)."""

    usage: "CaptionUsage | None" = None


@dataclass(frozen=True)
class GeneratedCaption:
    title: str | None
    description: str | None
    keywords: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "description": self.description, "keywords": list(self.keywords)}


@dataclass
class CaptionUsage:
    """What captioning cost so far: requests sent, photos answered from the cache, tokens billed."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)

    def add(self, other: "CaptionUsage") -> None:
        for name, value in other.__dict__.items():
            setattr(self, name, getattr(self, name) + value)


def parse_captioner_name(name: str) -> str:
    """`openai:MODEL` -> MODEL (the only kind there is); ValueError otherwise."""
    kind, _, model = (name or "").strip().partition(":")
    if kind != "openai" or not model.strip():
        raise ValueError(f"unknown captioner {name!r}: use openai:MODEL (an OpenAI-compatible chat model that "
                         "takes images, e.g. openai:gpt-4o-mini, or a local server's model via OPENAI_BASE_URL)")
    return model.strip()


def load_captioner(name: str, *, hosted: HostedOptions | None = None, prompt: str | None = None
                   ) -> "OpenAICaptioner":
    """The captioner `name` (`openai:MODEL`) asking with `prompt` (None: DEFAULT_PROMPT). Sends nothing yet."""
    return OpenAICaptioner(parse_captioner_name(name), hosted or HostedOptions.from_environment(),
                           prompt=prompt or DEFAULT_PROMPT)


class OpenAICaptioner:
    """Generated captions through an OpenAI-compatible /chat/completions endpoint."""

    hosted = True

    def __init__(self, model: str, options: HostedOptions, *, prompt: str = DEFAULT_PROMPT):
        self.model = model
        self.prompt = prompt
        self.client = openai_client(SERVICE, options)
        self.usage = CaptionUsage()
        self._lock = threading.Lock()
        settings = json.dumps([SETTINGS_VERSION, model, prompt, self.client.base_url, SCHEMA], sort_keys=True)
        # what a caption depends on: the cache key with the content hash (no key, nothing secret in it)
        self.settings_id = hashlib.sha256(settings.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def caption(self, image: Image.Image | bytes | ImageAtURL) -> tuple[GeneratedCaption, CaptionUsage]:
        """The caption of an upright image (or image file bytes, or a URL the service fetches), and what this
        request cost. InputRefused for an image the service cannot take (nothing was sent, or it refused it),
        CaptionError for an answer that is no caption (both ValueErrors: this photo only); ServiceError and
        ServiceAuthError stop the run (hosted.py)."""
        if isinstance(image, ImageAtURL):
            url = image.url
        else:
            if isinstance(image, (bytes, bytearray)):
                image = Image.open(io.BytesIO(bytes(image)))
                image.load()
            url = "data:image/jpeg;base64," + base64.b64encode(encode_for_service(image, LIMITS, SERVICE)).decode()
        answer = self.client.post("/chat/completions", json_body=self._request(url))
        cost = CaptionUsage(requests=1)
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if isinstance(usage, dict):
            cost.prompt_tokens = _count(usage.get("prompt_tokens"))
            cost.completion_tokens = _count(usage.get("completion_tokens"))
        with self._lock:
            self.usage.add(cost)
        try:
            return parse_reply(answer), cost
        except CaptionError as exc:
            exc.usage = cost  # bought all the same
            raise

    def _request(self, image_url: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.prompt},
                {"role": "user", "content": [
                    {"type": "text", "text": "Caption this photo."},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ]},
            ],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "caption", "strict": True, "schema": SCHEMA}},
        }


def _count(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def parse_reply(answer: Any) -> GeneratedCaption:
    """The caption in a chat-completions answer: JSON content (a ```json fence tolerated), cleaned and cut."""
    try:
        message = answer["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise CaptionError(f"{SERVICE} answered without a message") from None
    if message.get("refusal"):
        raise CaptionError(f"the model refused to caption this photo: {_clean(str(message['refusal']), 200)}")
    content = message.get("content")
    if isinstance(content, list):  # some servers answer content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise CaptionError(f"{SERVICE} answered without text")
    text = content.strip()
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        raise CaptionError(f"the model's answer is not the JSON asked for: {_clean(text, 120)!r}") from None
    if not isinstance(value, dict):
        raise CaptionError("the model's answer is not a JSON object")
    keywords = value.get("keywords") or []
    if isinstance(keywords, str):
        keywords = keywords.split(",")
    cleaned: list[str] = []
    for word in keywords if isinstance(keywords, list) else []:
        word = _clean(str(word), MAX_KEYWORD_CHARS)
        if word and word.casefold() not in {k.casefold() for k in cleaned}:
            cleaned.append(word)
    caption = GeneratedCaption(_clean(value.get("title"), MAX_TITLE_CHARS),
                               _clean(value.get("description"), MAX_DESCRIPTION_CHARS), tuple(cleaned[:MAX_KEYWORDS]))
    if not (caption.title or caption.description or caption.keywords):
        raise CaptionError("the model's answer holds no title, description or keywords")
    return caption


def _clean(value: Any, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    text = " ".join(_CONTROL.sub(" ", value).split())
    return text[:limit] or None

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
sent as a JPEG of at most SEND_SIDE px a side: it leaves the machine, so captioning is opt-in, never a default.

Captions are cached by the photo's content hash (and the model, prompt and server) as small JSON files under the
cache folder: a photo is never captioned twice for the same settings, and a moved or re-indexed photo keeps its
caption without a request. The answer is untrusted text: cut to the caption limits, control characters removed.
Rate limit, retries, concurrency and keys: hosted.py. `usage` counts requests, cache hits and tokens, for the
cost a run shows.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from .hosted import HostedOptions, ImageLimits, encode_for_service
from .openai_embed import openai_client

SERVICE = "the OpenAI-compatible chat endpoint"
SEND_SIDE = 1024  # OpenAI's "high" detail tiles 512 px squares of an image fitted to 2048 x 768; 1024 keeps it cheap
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
CACHE_VERSION = 1
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class CaptionError(ValueError):
    """The model's answer was not a caption (no JSON, a refusal): this photo has no generated caption."""


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


def parse_captioner_name(name: str) -> str:
    """`openai:MODEL` -> MODEL (the only kind there is); ValueError otherwise."""
    kind, _, model = (name or "").strip().partition(":")
    if kind != "openai" or not model.strip():
        raise ValueError(f"unknown captioner {name!r}: use openai:MODEL (an OpenAI-compatible chat model that "
                         "takes images, e.g. openai:gpt-4o-mini, or a local server's model via OPENAI_BASE_URL)")
    return model.strip()


def load_captioner(name: str, cache_dir: Path | str, *, hosted: HostedOptions | None = None,
                   prompt: str | None = None) -> "OpenAICaptioner":
    """The captioner `name` (`openai:MODEL`), caching under cache_dir/captions. Sends nothing yet."""
    return OpenAICaptioner(parse_captioner_name(name), Path(cache_dir), hosted or HostedOptions.from_environment(),
                           prompt=prompt or DEFAULT_PROMPT)


class OpenAICaptioner:
    """Generated captions through an OpenAI-compatible /chat/completions endpoint, cached by content hash."""

    hosted = True

    def __init__(self, model: str, cache_dir: Path, options: HostedOptions, *, prompt: str = DEFAULT_PROMPT):
        self.model = model
        self.prompt = prompt
        self.client = openai_client(SERVICE, options)
        self.usage = CaptionUsage()
        self._lock = threading.Lock()
        settings = json.dumps([CACHE_VERSION, model, prompt, self.client.base_url, SCHEMA], sort_keys=True)
        self.settings_id = hashlib.sha256(settings.encode()).hexdigest()[:16]
        self.cache_folder = Path(cache_dir) / "captions" / self.settings_id

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def cached(self, content_hash: str) -> GeneratedCaption | None:
        """The cached caption of these bytes for these settings, or None."""
        try:
            value = json.loads(self._cache_path(content_hash).read_text(encoding="utf-8"))
            return GeneratedCaption(value["title"], value["description"], tuple(value["keywords"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def caption(self, image: Image.Image | bytes, content_hash: str | None = None) -> GeneratedCaption:
        """The caption of an upright image (or image file bytes). content_hash names the photo's bytes for the
        cache (ingest's content hash); without it, the hash of the JPEG sent. InputRefused for an image the
        service cannot take, CaptionError for an answer that is no caption (both ValueErrors: this photo only)."""
        if isinstance(image, (bytes, bytearray)):
            import io  # noqa: PLC0415

            image = Image.open(io.BytesIO(bytes(image)))
            image.load()
        data = encode_for_service(image, LIMITS, SERVICE)
        key = content_hash or hashlib.sha256(data).hexdigest()
        found = self.cached(key)
        if found is not None:
            with self._lock:
                self.usage.cached += 1
            return found
        answer = self.client.post("/chat/completions", json_body=self._request(data))
        with self._lock:
            self.usage.requests += 1
            usage = answer.get("usage") if isinstance(answer, dict) else None
            if isinstance(usage, dict):
                self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
        caption = parse_reply(answer)
        self._store(key, caption)
        return caption

    def caption_many(self, images: Sequence[Image.Image], hashes: Sequence[str | None]) -> list[Any]:
        """Captions of several images, up to the client's concurrency at a time; a ValueError in place of the
        caption of an image that has none."""
        def one(pair):
            try:
                return self.caption(*pair)
            except ValueError as exc:
                return exc
        return self.client.map(one, list(zip(images, hashes)))

    def _request(self, jpeg: bytes) -> dict[str, Any]:
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.prompt},
                {"role": "user", "content": [
                    {"type": "text", "text": "Caption this photo."},
                    {"type": "image_url", "image_url": {"url": url}},
                ]},
            ],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "caption", "strict": True, "schema": SCHEMA}},
        }

    def _cache_path(self, content_hash: str) -> Path:
        safe = re.sub(r"[^0-9A-Za-z_-]", "_", content_hash)[:128]
        return self.cache_folder / safe[:2] / f"{safe}.json"

    def _store(self, content_hash: str, caption: GeneratedCaption) -> None:
        path = self._cache_path(content_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(caption.to_json(), fh, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


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

"""Loopback stand-ins for the hosted services pixsearch talks to, implementing their documented request and answer
shapes, and recording every request so tests can check what was sent:

  * Azure AI Vision multimodal embeddings: POST /computervision/retrieval:vectorizeImage (image bytes,
    application/octet-stream) and retrieval:vectorizeText ({"text"}), api-version and model-version query
    parameters, the key in Ocp-Apim-Subscription-Key; answers {"modelVersion", "vector": [1024 floats]};
  * OpenAI-compatible APIs: POST /v1/embeddings ({"model", "input": [...]}) and /v1/chat/completions (a text part
    and an image_url part with a data: URL, or an http(s) URL the service fetches), the key as
    "Authorization: Bearer KEY";
  * a photo the services may fetch themselves: vectorizeImage with {"url": ...} (application/json) and a chat
    image_url that is a URL are fetched with an HTTP GET, as the services do; GET /files/NAME serves `files`
    (name -> bytes) for that, so a local photo can be given a URL (recorded in `fetched`).

Vectors are deterministic: each colour of PALETTE (and its name in a few languages) is a fixed random direction, so
an image's vector says which colour it mostly is, and a text's vector which colour it names. They are not unit
length (pixsearch normalises). `faults` is a queue of scripted answers (status, headers, delay) given before the
real ones, for throttling, outages, timeouts and refused keys.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
}
# the service is multilingual: a query in another language lands on the same colour
WORDS = {"red": "red", "rojo": "red", "rot": "red", "green": "green", "verde": "green", "grün": "green",
         "blue": "blue", "azul": "blue", "blau": "blue", "yellow": "yellow", "amarillo": "yellow",
         "purple": "purple", "morado": "purple"}
AZURE_DIMS = 1024


def concept_vector(name: str, dims: int = AZURE_DIMS) -> np.ndarray:
    """A fixed direction per concept, of length 3 (so a client that forgets to normalise is caught)."""
    v = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(dims)
    return 3.0 * v / np.linalg.norm(v)


def nearest_colour(rgb: tuple[float, float, float]) -> str:
    return min(PALETTE, key=lambda n: sum((a - b) ** 2 for a, b in zip(PALETTE[n], rgb)))


def image_vector(name: str, dims: int = AZURE_DIMS) -> np.ndarray:
    """An image of colour `name`: mostly that colour's direction, a little of the next colour's (so every text
    query ranks every photo, in an order the test can compute from these vectors alone)."""
    names = list(PALETTE)
    following = names[(names.index(name) + 1) % len(names)]
    return concept_vector(name, dims) + 0.4 * concept_vector(following, dims)


def text_vector(text: str, dims: int = AZURE_DIMS) -> np.ndarray:
    words = [WORDS[w] for w in text.lower().replace(",", " ").split() if w in WORDS]
    if not words:
        return concept_vector("text:" + text, dims)
    return sum(concept_vector(w, dims) for w in words)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    arrived: float = 0.0  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Fault:
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (longer than the client's timeout: a timeout)
    body: Any = None


class FakeService:
    """One loopback HTTP server playing Azure AI Vision and an OpenAI-compatible API at once."""

    def __init__(self, *, azure_key: str = "azure-key", openai_key: str | None = "openai-key",
                 model_version: str = "2023-04-15", max_image_bytes: int = 20_000_000, embed_dims: int = 64,
                 caption_reply: Any = None):
        self.azure_key, self.openai_key = azure_key, openai_key
        self.model_version = model_version
        self.answer_version: str | None = None  # answer with this modelVersion instead (a misbehaving service)
        self.max_image_bytes = max_image_bytes
        self.embed_dims = embed_dims
        self.caption_reply = caption_reply  # None: a caption naming the image's colour
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.image_answers: list[tuple[str, np.ndarray, tuple[int, int]]] = []  # (colour, vector, size) per image
        self.files: dict[str, bytes] = {}  # served at GET /files/NAME (any query string): photos "with a URL"
        self.fetched: list[str] = []  # the URLs the service fetched photos from
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                service._handle(self)

            def do_GET(self):
                path = urlsplit(self.path).path
                name = path.removeprefix("/files/")
                if path.startswith("/files/") and name in service.files:
                    service._send(self, 200, service.files[name])
                else:
                    service._send(self, 404, {"error": {"code": "NotFound", "message": "no such path"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeService":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_to(self, suffix: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(suffix)]

    # -- handling ----------------------------------------------------------------------------------------------------

    def _fetch(self, url: str) -> bytes:
        with self._lock:
            self.fetched.append(url)
        return _fetch_url(url)

    def _send(self, handler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                handler.send_header(k, v)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _handle(self, handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        parts = urlsplit(handler.path)
        record = Recorded("POST", parts.path, parse_qs(parts.query),
                          {k.lower(): v for k, v in handler.headers.items()}, body, time.monotonic())
        with self._lock:
            self.requests.append(record)
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            time.sleep(fault.delay)
            self._send(handler, fault.status, fault.body if fault.body is not None else
                       {"error": {"code": str(fault.status), "message": "scripted fault"}}, fault.headers)
            return
        if parts.path.startswith("/computervision/"):
            self._azure(handler, record)
        elif parts.path in ("/v1/embeddings", "/v1/chat/completions"):
            self._openai(handler, record)
        else:
            self._send(handler, 404, {"error": {"code": "404", "message": "Resource not found"}})

    def _azure(self, handler, r: Recorded) -> None:
        if r.headers.get("ocp-apim-subscription-key") != self.azure_key:
            return self._send(handler, 401, {"error": {"code": "401", "message": "Access denied due to invalid "
                                                       "subscription key or wrong API endpoint."}})
        if r.query.get("api-version") != ["2024-02-01"] or r.query.get("model-version") != [self.model_version]:
            return self._send(handler, 400, {"error": {"code": "InvalidRequest", "message": f"bad query {r.query}"}})
        content_type = r.headers.get("content-type", "")
        if r.path == "/computervision/retrieval:vectorizeImage":
            body = r.body
            if content_type.startswith("application/json"):  # {"url": ...}: the service fetches the image
                try:
                    body = self._fetch(r.json()["url"])
                except Exception:  # noqa: BLE001
                    return self._send(handler, 400, {"error": {"code": "InvalidImageUrl", "message": "cannot fetch"}})
            elif content_type != "application/octet-stream":
                return self._send(handler, 415, {"error": {"code": "InvalidContentType", "message": content_type}})
            if len(body) >= self.max_image_bytes:
                return self._send(handler, 400, {"error": {"code": "InvalidImageSize", "message": "too large"}})
            try:
                image = Image.open(io.BytesIO(body))
                image.load()
            except Exception:  # noqa: BLE001
                return self._send(handler, 400, {"error": {"code": "InvalidImageFormat", "message": "bad image"}})
            if not (10 < image.width < 16000 and 10 < image.height < 16000):
                return self._send(handler, 400, {"error": {"code": "InvalidImageSize",
                                                           "message": f"{image.width}x{image.height}"}})
            colour = nearest_colour(tuple(np.asarray(image.convert("RGB"), np.float64).mean(axis=(0, 1))))
            vector = image_vector(colour)
            with self._lock:
                self.image_answers.append((colour, vector, image.size))
        elif r.path == "/computervision/retrieval:vectorizeText":
            if not content_type.startswith("application/json"):
                return self._send(handler, 415, {"error": {"code": "InvalidContentType", "message": content_type}})
            text = r.json().get("text", "")
            if not text.strip() or len(text.split()) > 70:
                return self._send(handler, 400, {"error": {"code": "InvalidTextLength", "message": "1-70 words"}})
            vector = text_vector(text)
        else:
            return self._send(handler, 404, {"error": {"code": "404", "message": "Resource not found"}})
        self._send(handler, 200, {"modelVersion": self.answer_version or self.model_version, "vector": [float(x) for x in vector]})

    def _openai(self, handler, r: Recorded) -> None:
        if self.openai_key is not None and r.headers.get("authorization") != f"Bearer {self.openai_key}":
            return self._send(handler, 401, {"error": {"message": "Incorrect API key provided", "type":
                                                       "invalid_request_error", "code": "invalid_api_key"}})
        if not r.headers.get("content-type", "").startswith("application/json"):
            return self._send(handler, 415, {"error": {"message": "JSON expected"}})
        body = r.json()
        if r.path == "/v1/embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            if any(not isinstance(t, str) or not t for t in inputs):
                return self._send(handler, 400, {"error": {"message": "'$.input' is invalid"}})
            data = [{"object": "embedding", "index": i, "embedding": [float(x) for x in
                                                                       text_vector(t, self.embed_dims)]}
                    for i, t in enumerate(inputs)]
            data.reverse()  # answers may come in any order: the index says which is which
            return self._send(handler, 200, {"object": "list", "data": data, "model": body["model"],
                                             "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}})
        # chat completions with an image
        content = body["messages"][-1]["content"]
        image_part = next(p for p in content if p.get("type") == "image_url")
        url = image_part["image_url"]["url"]
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            assert header == "data:image/jpeg;base64", header
            image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
        else:
            image = Image.open(io.BytesIO(self._fetch(url))).convert("RGB")
        colour = nearest_colour(tuple(np.asarray(image, np.float64).mean(axis=(0, 1))))
        reply = self.caption_reply if self.caption_reply is not None else json.dumps(
            {"title": f"A {colour} square", "description": f"A flat {colour} colour field.",
             "keywords": [colour, "colour"]})
        self._send(handler, 200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": reply}}],
                                  "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}})


def _fetch_url(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback URLs the test made
        return answer.read()


def colour_photos(folder, names=tuple(PALETTE), size=(64, 48)) -> dict[str, str]:
    """One solid-colour PNG per colour name (with a little noise, so files differ); name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {}
    for name in names:
        pixels = np.clip(np.array(PALETTE[name], np.float64) + rng.normal(0, 3, (size[1], size[0], 3)), 0, 255)
        path = folder / f"{name}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths[name] = str(path)
    return paths

"""Text embeddings from an OpenAI-compatible `/embeddings` endpoint (`openai-embed:MODEL[?dimensions=N]`), for
caption-only indexes: photos are found through their captions (people's, and generated ones: models/captioner.py),
embedded into the index's caption field; queries are embedded by the same model.

    POST {OPENAI_BASE_URL or https://api.openai.com/v1}/embeddings
         Authorization: Bearer OPENAI_API_KEY
         {"model": MODEL, "input": [texts...], "encoding_format": "float"[, "dimensions": N]}
      -> {"data": [{"index": i, "embedding": [...]}, ...], "usage": {...}}

OpenAI, Azure OpenAI (its /openai/v1 endpoint) and local servers speaking the same API (Ollama, vLLM, llama.cpp's
server) all answer it. The width is known for OpenAI's own models (text-embedding-3-small 1536, -3-large 3072,
ada-002 1536); any other model needs `?dimensions=N` in its name, so the index's field can be made before any
request. For text-embedding-3 models `dimensions` is also sent (the service shortens the vectors); for others it only
declares the width, and an answer of another width is refused.

The model has no image tower: embed_images fills no vector (the `text` field stays empty; hybrid search ranks
photos by their caption vectors and keywords). Texts are sent in batches of up to MAX_BATCH, each cut at
MAX_TEXT_CHARS; empty texts are zero rows, sent nowhere. Rate limit, retries, concurrency and keys: hosted.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlencode

import numpy as np
from PIL import Image

from .base import DeclaredModel, ImageEmbeddings, ModelCapabilities, ModelNotAvailableError, VectorSpace, unit_rows
from .hosted import HostedOptions, InputRefused, ServiceClient, ServiceError, check_endpoint

SERVICE = "the OpenAI-compatible embeddings endpoint"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
SPACE = "text"
KNOWN_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
MAX_BATCH = 256  # inputs per request (OpenAI allows 2048)
MAX_TEXT_CHARS = 8000  # well under the 8191 tokens OpenAI's models take per input
KEY_HINT = "OPENAI_API_KEY (or openai_api_key in the config file)"
HOSTED = True  # load() takes hosted=HostedOptions (models/__init__.py)


@dataclass(frozen=True)
class EmbeddingModel:
    model: str
    dims: int
    send_dimensions: bool  # ask the service for this width (text-embedding-3 models)

    @property
    def name(self) -> str:
        default = KNOWN_DIMS.get(self.model)
        return f"openai-embed:{self.model}" + ("" if self.dims == default else f"?{urlencode({'dimensions': self.dims})}")

    @property
    def model_id(self) -> str:
        return f"openai-embed:{self.model}@{self.dims}"


def parse(argument: str) -> EmbeddingModel:
    model, _, query = argument.strip().partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - {"dimensions"})
    if unknown:
        raise ValueError(f"openai-embed: unknown parameter(s) {', '.join(unknown)}; known: dimensions")
    if not model or any(c.isspace() for c in model):
        raise ValueError(f"openai-embed: {model!r} is not a model name")
    dims = KNOWN_DIMS.get(model)
    if "dimensions" in params:
        try:
            dims = int(params["dimensions"])
        except ValueError:
            raise ValueError(f"openai-embed: dimensions must be an integer, got {params['dimensions']!r}") from None
        if not 1 <= dims <= 16000:
            raise ValueError("openai-embed: dimensions must be in 1..16000")
    if dims is None:
        raise ValueError(f"openai-embed: the width of {model!r} is not known here; name it as "
                         f"openai-embed:{model}?dimensions=N (N: the length of its vectors)")
    return EmbeddingModel(model, dims, send_dimensions=model.startswith("text-embedding-3") and "dimensions" in params)


def capabilities(argument: str, cache_dir: Path) -> ModelCapabilities:
    """Registry declaration: from the name alone, no request."""
    return capabilities_of(parse(argument))


def capabilities_of(target: EmbeddingModel) -> ModelCapabilities:
    space = VectorSpace(SPACE, target.dims, "cosine", target.model_id)
    return ModelCapabilities(name=target.name, model_id=target.model_id, spaces={SPACE: space}, text_space=SPACE,
                             image_space=SPACE)


def requests_for(argument: str, images: int, texts: int) -> int:
    """Photos need no request; texts go MAX_BATCH to a request (at most: ingest embeds captions batch by batch,
    so a run makes one request per ingest batch holding captions)."""
    parse(argument)
    return -(-texts // MAX_BATCH) if texts else 0


def load(argument: str, cache_dir: Path, *, backend: str = "auto", threads: int | None = None,
         hosted: HostedOptions | None = None) -> "OpenAIEmbedder":
    """Registry factory; `backend` and `threads` concern local models and are ignored. Sends nothing yet."""
    return OpenAIEmbedder(parse(argument), hosted or HostedOptions.from_environment())


def openai_client(service: str, options: HostedOptions) -> ServiceClient:
    """A client of the OpenAI-compatible API at OPENAI_BASE_URL (default api.openai.com/v1) with OPENAI_API_KEY.
    A local server may need no key: then none is sent."""
    base_url = check_endpoint(options.openai_base_url or DEFAULT_BASE_URL, "OPENAI_BASE_URL")
    key = options.openai_api_key
    if not key and base_url == DEFAULT_BASE_URL:
        raise ModelNotAvailableError(f"{service} at {base_url} needs a key: set {KEY_HINT}")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return ServiceClient(service, base_url, headers, options, secrets=[key] if key else [], key_hint=KEY_HINT)


class OpenAIEmbedder(DeclaredModel):
    """Implements Embedder (text only) through an OpenAI-compatible /embeddings endpoint."""

    hosted = True  # calls a service: every embedding is a request (service/library.py skips the warm-up)
    embeds_images = False  # no image tower: an image query is refused (search/embedding.py), never a blank vector

    def __init__(self, target: EmbeddingModel, options: HostedOptions):
        self.target = target
        self.capabilities = capabilities_of(target)
        self.client = openai_client(SERVICE, options)

    @property
    def requests_sent(self) -> int:
        return self.client.requests_sent

    def prepare_image(self, image: Image.Image) -> None:
        return None

    def embed_images(self, images: Sequence[Any]) -> ImageEmbeddings:
        """No image tower: no vectors (the photos are found through their captions)."""
        return ImageEmbeddings(vectors={}, fields=[{} for _ in images])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = [t.strip()[:MAX_TEXT_CHARS] for t in texts]
        out = np.zeros((len(texts), self.target.dims), np.float32)
        wanted = [i for i, t in enumerate(texts) if t]
        batches = [wanted[s:s + MAX_BATCH] for s in range(0, len(wanted), MAX_BATCH)]
        for batch, vectors in zip(batches, self.client.map(lambda b: self._batch([texts[i] for i in b]), batches)):
            out[batch] = vectors
        return unit_rows(out)

    def _batch(self, texts: list[str]) -> np.ndarray:
        body: dict[str, Any] = {"model": self.target.model, "input": texts, "encoding_format": "float"}
        if self.target.send_dimensions:
            body["dimensions"] = self.target.dims
        try:
            answer = self.client.post("/embeddings", json_body=body)
        except InputRefused as exc:
            raise ValueError(f"{SERVICE} refused the texts: {exc}") from None
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            raise ServiceError(f"{SERVICE} answered {len(data) if isinstance(data, list) else 'no'} embeddings for "
                               f"{len(texts)} texts")
        vectors = np.zeros((len(texts), self.target.dims), np.float32)
        seen = set()
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, dict) else None
            vector = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(texts) or index in seen:
                raise ServiceError(f"{SERVICE} answered an embedding with a bad index {index!r}")
            if not isinstance(vector, list) or len(vector) != self.target.dims:
                raise ServiceError(f"{SERVICE} answered a {len(vector) if isinstance(vector, list) else '?'}-d "
                                   f"vector for {self.target.model}, which this index declares {self.target.dims}-d")
            seen.add(index)
            vectors[index] = vector
        return vectors


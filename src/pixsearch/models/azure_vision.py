"""Azure AI Vision multimodal embeddings (`azure-vision:https://RESOURCE.cognitiveservices.azure.com`).

Every photo and every text query is vectorized by the service (Florence, 1024-d, multilingual from model version
2023-04-15), into one cosine field `azure_vision` that text and image queries both land in:

    POST {endpoint}/computervision/retrieval:vectorizeImage?api-version=A&model-version=M
         Content-Type: application/octet-stream, the image bytes          -> {"modelVersion": M, "vector": [...]}
    POST {endpoint}/computervision/retrieval:vectorizeText?api-version=A&model-version=M
         Content-Type: application/json, {"text": "..."}                  -> {"modelVersion": M, "vector": [...]}

with the key in the Ocp-Apim-Subscription-Key header (AZURE_AI_VISION_KEY, or azure_vision_key in the config file).
A photo the service can fetch itself (hosted.ImageAtURL: an object-store photo's SAS URL, given by ingest's
IngestOptions.photo_url) is sent as Content-Type: application/json, {"url": "..."} instead of its bytes.

The name may carry `?model-version=M` (default 2023-04-15; it is part of the model id: vectors of different model
versions cannot be compared) and `?api-version=A` (default 2024-02-01; how we talk to the service, not part of the
id). The service's limits are applied before sending (hosted.encode_for_service): JPEG, sides 11..15,999 px, under
20 MB, the long side scaled to 2048 px at most; a photo that cannot fit is a per-file failure, sent nowhere. Texts
are cut at the service's 70 words; an empty text is a zero vector (the service refuses empty texts; a zero vector
is what "no caption" should score).

The request is made in prepare_image (ingest's decode threads), so a photo the service refuses fails on its own
while the run goes on; embed_images only stacks the answers. A service that is down or throttles past every retry,
or refuses the key, stops the run (hosted.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from PIL import Image

from .base import DeclaredModel, ImageEmbeddings, ModelCapabilities, unit_rows
from .hosted import HostedOptions, ImageAtURL, ImageLimits, InputRefused, ServiceClient, ServiceError, \
    check_endpoint, encode_for_service

SERVICE = "Azure AI Vision"
DIMS = 1024
SPACE = "azure_vision"
DEFAULT_API_VERSION = "2024-02-01"
DEFAULT_MODEL_VERSION = "2023-04-15"
MAX_TEXT_WORDS = 70
# "larger than 10 x 10 pixels and smaller than 16,000 x 16,000 pixels", "less than 20 MB"
LIMITS = ImageLimits(min_side=11, max_side=15_999, max_bytes=20_000_000 - 1)
KEY_HINT = "AZURE_AI_VISION_KEY (or azure_vision_key in the config file)"
HOSTED = True  # load() takes hosted=HostedOptions (models/__init__.py)


@dataclass(frozen=True)
class AzureVisionTarget:
    endpoint: str
    api_version: str = DEFAULT_API_VERSION
    model_version: str = DEFAULT_MODEL_VERSION

    @property
    def name(self) -> str:
        """What loads this model again (recorded by an index): the endpoint, and any version not the default."""
        query = {k: v for k, v in (("model-version", self.model_version), ("api-version", self.api_version))
                 if v != {"model-version": DEFAULT_MODEL_VERSION, "api-version": DEFAULT_API_VERSION}[k]}
        return "azure-vision:" + self.endpoint + (f"?{urlencode(query)}" if query else "")

    @property
    def model_id(self) -> str:
        # the vectors depend on the model version alone: any resource (region) of that version gives the same
        return f"azure-vision:multimodal-embeddings@{self.model_version}"


def parse(argument: str) -> AzureVisionTarget:
    """`https://RESOURCE.cognitiveservices.azure.com[?model-version=M][&api-version=A]`."""
    parts = urlsplit(argument.strip())
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - {"model-version", "api-version"})
    if unknown:
        raise ValueError(f"azure-vision: unknown parameter(s) {', '.join(unknown)}; known: model-version, api-version")
    if parts.path not in ("", "/"):
        raise ValueError(f"azure-vision: give the resource's endpoint only (https://RESOURCE.cognitiveservices."
                         f"azure.com), not the path {parts.path!r}")
    endpoint = check_endpoint(urlunsplit((parts.scheme, parts.netloc, "", "", "")), "azure-vision endpoint")
    for key in params:
        if not params[key].strip():
            raise ValueError(f"azure-vision: {key} is empty")
    return AzureVisionTarget(endpoint, params.get("api-version", DEFAULT_API_VERSION),
                             params.get("model-version", DEFAULT_MODEL_VERSION))


def capabilities(argument: str, cache_dir: Path) -> ModelCapabilities:
    """Registry declaration: from the name alone, no request."""
    target = parse(argument)
    return ModelCapabilities.joint_space(name=target.name, family=SPACE, dims=DIMS, model_id=target.model_id)


def requests_for(argument: str, images: int, texts: int) -> int:
    """One request per photo and one per non-empty text (vectorizeText takes one text)."""
    parse(argument)
    return images + texts


def load(argument: str, cache_dir: Path, *, backend: str = "auto", threads: int | None = None,
         hosted: HostedOptions | None = None) -> "AzureVisionEmbedder":
    """Registry factory; `backend` and `threads` concern local models and are ignored. Sends nothing yet."""
    return AzureVisionEmbedder(parse(argument), hosted or HostedOptions.from_environment())


@dataclass(frozen=True)
class ServiceVector:
    """An image already vectorized by the service (prepare_image's result)."""

    vector: np.ndarray


class AzureVisionEmbedder(DeclaredModel):
    """Implements Embedder through Azure AI Vision's retrieval:vectorizeImage / retrieval:vectorizeText."""

    hosted = True  # calls a service: every embedding is a request (service/library.py skips the warm-up)
    accepts_urls = True  # prepare_image takes an ImageAtURL: the service fetches the photo itself

    def __init__(self, target: AzureVisionTarget, options: HostedOptions):
        from .base import ModelNotAvailableError  # noqa: PLC0415

        if not options.azure_vision_key:
            raise ModelNotAvailableError(f"{SERVICE} needs a key: set {KEY_HINT}")
        self.target = target
        self.capabilities = ModelCapabilities.joint_space(name=target.name, family=SPACE, dims=DIMS,
                                                          model_id=target.model_id)
        self.client = ServiceClient(SERVICE, target.endpoint, {"Ocp-Apim-Subscription-Key": options.azure_vision_key},
                                    options, secrets=[options.azure_vision_key], key_hint=KEY_HINT)
        self.limits = LIMITS
        self._params = {"api-version": target.api_version, "model-version": target.model_version}

    @property
    def requests_sent(self) -> int:
        return self.client.requests_sent

    def _vector(self, answer: Any) -> np.ndarray:
        vector = answer.get("vector") if isinstance(answer, dict) else None
        if not isinstance(vector, list) or len(vector) != DIMS:
            raise ServiceError(f"{SERVICE} answered without a {DIMS}-d vector "
                               f"(got {len(vector) if isinstance(vector, list) else type(vector).__name__})")
        version = answer.get("modelVersion")
        if version is not None and version != self.target.model_version:
            raise ServiceError(f"{SERVICE} answered with model version {version!r}, not the index's "
                               f"{self.target.model_version!r}")
        return np.asarray(vector, dtype=np.float32)

    def prepare_image(self, image: Image.Image | ImageAtURL) -> ServiceVector:
        """The image's vector from the service (see the module docstring for why here): its bytes, or for an
        ImageAtURL its URL ({"url": ...}: the service fetches the photo). InputRefused (a ValueError: one photo's
        failure) for an image outside the limits or one the service refuses."""
        if isinstance(image, ImageAtURL):
            answer = self.client.post("/computervision/retrieval:vectorizeImage", params=self._params,
                                      json_body={"url": image.url})
        else:
            data = encode_for_service(image, self.limits, SERVICE)
            answer = self.client.post("/computervision/retrieval:vectorizeImage", params=self._params, content=data,
                                      content_type="application/octet-stream")
        return ServiceVector(self._vector(answer))

    def embed_images(self, images: Sequence[Any]) -> ImageEmbeddings:
        images = list(images)
        prepared = self.client.map(lambda im: im if isinstance(im, ServiceVector) else self.prepare_image(im), images)
        vectors = np.stack([p.vector for p in prepared]) if prepared else np.zeros((0, DIMS), np.float32)
        return ImageEmbeddings(vectors={SPACE: unit_rows(vectors)}, fields=[{} for _ in images])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, 1024) unit rows; empty texts are zero rows, sent nowhere."""
        def one(text: str) -> np.ndarray:
            words = text.split()
            if not words:
                return np.zeros(DIMS, np.float32)
            answer = self.client.post("/computervision/retrieval:vectorizeText", params=self._params,
                                      json_body={"text": " ".join(words[:MAX_TEXT_WORDS])})
            return self._vector(answer)

        texts = list(texts)
        if not texts:
            return np.zeros((0, DIMS), np.float32)
        try:
            return unit_rows(np.stack(self.client.map(one, texts)))
        except InputRefused as exc:  # a query or caption the service will not take: not a photo's failure
            raise ValueError(f"{SERVICE} refused the text: {exc}") from None

"""One search request, whichever front door it came through, and how it is carried out.

Steps: resolve the query terms to one vector (search/expressions.py) -> retrieve the vector list and/or the keyword
list -> fuse them (RRF) in hybrid mode -> cut the irrelevant tail -> sort -> page -> facets.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image

from pixsearch.search.expressions import Term, combine, parse_query
from pixsearch.search.facets import count_facets
from pixsearch.search.ranking import Cutoff, reciprocal_rank_fusion, sort_hits
from pixsearch.store import Filter, Hit, QueryOptions, SchemaError, SearchResult
from pixsearch.store.schema import BROWSE_ORDER
from pixsearch.store.tables import HitList

if TYPE_CHECKING:
    from pixsearch.service import Index

MODES = ("vector", "keyword", "hybrid")
MAX_TOP = 1000
MAX_WINDOW = 1000  # skip + top: ANN indexes return at most this many candidates per query
FUSION_DEPTH = 50  # each list contributes at least this many candidates to hybrid fusion


@dataclass
class VectorQuery:
    """One more ranked list, fused with the others by RRF (Azure's `vectorQueries`): its own query, vector field,
    number of neighbours, fusion weight and exact (exhaustive) search."""

    text: str | None = None
    image: str | Path | bytes | Image.Image | None = None
    ids: Sequence[str] | None = None
    vector: Any = None
    field: str | None = None
    k: int | None = None
    weight: float = 1.0
    exact: bool = False


@dataclass
class SearchRequest:
    """What to look for and how to present it. Every part is optional except that something must be asked.

    text:    a query expression: plain text, or terms like `"beach" + "sunset" - "people"`, `2:"red car"`,
             `image:PATH`, `id:KEY`, `ids:A,B` (see search/expressions.py).
    image:   an image (path, bytes or PIL image) added as a term.
    ids:     stored items whose mean vector is added as a term ("more like these").
    vector:  a raw query vector for `field`.
    vector_queries: more queries, each retrieved on its own and fused with the rest by weighted RRF.
    Nothing asked at all lists the documents passing the filter, newest first ("browse").
    filter:  an OData-style filter string or a filter tree.
    mode:    vector | keyword | hybrid; default hybrid for text queries on indexes with searchable fields.
    """

    text: str | None = None
    image: str | Path | bytes | Image.Image | None = None
    ids: Sequence[str] | None = None
    vector: Any = None
    field: str | None = None
    filter: str | Filter | None = None
    mode: str | None = None
    top: int = 10
    skip: int = 0
    cutoff: Cutoff = dataclass_field(default_factory=Cutoff)
    sort: Sequence[tuple[str, bool]] = ()  # (field, descending), applied after the relevance cut
    facets: Sequence[str] = ()
    weights: dict[str, float] = dataclass_field(default_factory=dict)  # "vector" / "keyword" weights for fusion
    vector_queries: Sequence[VectorQuery] = ()
    options: QueryOptions = dataclass_field(default_factory=QueryOptions)


@dataclass
class SearchResponse(HitList):
    hits: list[Hit]
    mode: str
    total: int  # relevant hits before paging (after the cut)
    complete: bool = True
    reason: str | None = None
    facets: dict[str, list[dict[str, Any]]] = dataclass_field(default_factory=dict)


def _validate(request: SearchRequest) -> None:
    if not 1 <= request.top <= MAX_TOP:
        raise ValueError(f"top must be between 1 and {MAX_TOP}, got {request.top}")
    if request.skip < 0:
        raise ValueError("skip cannot be negative")
    if request.skip + request.top > MAX_WINDOW:
        raise ValueError(f"skip + top must be at most {MAX_WINDOW}: refine the query or the filter instead")
    if request.mode is not None and request.mode not in MODES:
        raise ValueError(f"unknown mode {request.mode!r}; use one of {', '.join(MODES)}")


def resolve_filter(index: "Index", value: str | Filter | None) -> Filter | None:
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str):
        from pixsearch.search.odata import parse_filter

        return parse_filter(value)
    return value


def _image_of(value: str | Path | bytes | Image.Image) -> Image.Image:
    from pixsearch.ingest.decode import decode_bytes, read_and_decode

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray)):
        return decode_bytes(bytes(value)).image
    return read_and_decode(str(value)).image


class QueryVectorCache:
    """Recently embedded query texts and uploaded images, so paging through a query (every page is a new request)
    and asking it again skip the model. Keys carry the model id; the vectors are read-only."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        value = compute()  # outside the lock: two threads may embed the same query once each, never wrongly
        for array in value.values() if isinstance(value, dict) else [value]:
            array.setflags(write=False)
        with self._lock:
            self.misses += 1
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


def query_terms(request: SearchRequest) -> list[Term]:
    terms: list[Term] = []
    if request.text is not None and request.text.strip():
        terms += parse_query(request.text)
    if request.image is not None:
        terms.append(Term("image", request.image))
    if request.ids:
        terms.append(Term("ids", tuple(request.ids)))
    if request.vector is not None:
        terms.append(Term("vector", request.vector))
    return terms


def keyword_text(terms: Sequence[Term]) -> str | None:
    """The words keyword search looks for: the positive text terms."""
    words = [t.value for t in terms if t.kind == "text" and t.weight > 0]
    return " ".join(words) if words else None


def resolve_vector(index: "Index", terms: Sequence[Term], field_name: str | None) -> tuple[str, np.ndarray]:
    """Embed every term into one vector field and combine them.

    Field: the one given; else images and stored ids without text search the image space ("more like this":
    looks, not only meaning), and anything with text searches the text space.
    """
    kinds = {t.kind for t in terms}
    modelled = any(vf.model_id for vf in index.spec.vector_fields)
    if field_name is None:
        if modelled:
            embedder = index._checked_embedder()
            field_name = embedder.image_space if kinds <= {"image", "id", "ids"} else embedder.text_space
        else:
            field_name = index.spec.vector_field(None).name
    vf = index.spec.vector_field(field_name)
    cache = index.engine.query_vectors
    vectors, weights = [], []
    stored_needed = [key for t in terms if t.kind in ("id", "ids") for key in ([t.value] if t.kind == "id" else t.value)]
    stored = index.get(stored_needed, vectors=True) if stored_needed else {}
    for t in terms:
        if t.kind == "text":
            if not vf.model_id:
                raise SchemaError(f"index {index.name!r} has no model to embed text: search it with a vector")
            embedder = index._checked_embedder()
            if field_name != embedder.text_space:
                raise ValueError(f"text cannot be searched in the {field_name!r} field; use {embedder.text_space!r}")
            text = t.value
            vectors.append(cache.get(("text", embedder.model_id, text), lambda: embedder.embed_texts([text])[0]))
        elif t.kind == "image":
            if not vf.model_id:
                raise SchemaError(f"index {index.name!r} has no model to embed images: search it with a vector")
            embedder = index._checked_embedder()
            image = t.value

            def embed_image() -> dict[str, np.ndarray]:
                return {name: v[0] for name, v in embedder.embed_images([_image_of(image)]).vectors.items()}

            if isinstance(image, (bytes, bytearray)):  # uploads: the same bytes come back for every page
                digest = hashlib.blake2b(image, digest_size=16).digest()
                vectors.append(cache.get(("image", embedder.model_id, digest), embed_image)[field_name])
            else:
                vectors.append(embed_image()[field_name])
        elif t.kind in ("id", "ids"):
            keys = [t.value] if t.kind == "id" else list(t.value)
            missing = [key for key in keys if key not in stored]
            if missing:
                raise ValueError(f"unknown id(s) in index {index.name!r}: {', '.join(missing)}")
            items = [stored[key].get(field_name) for key in keys]
            if any(v is None for v in items):
                raise ValueError(f"some of {', '.join(keys)} have no {field_name!r} vector")
            vectors.append(np.mean(np.stack(items), axis=0))
        else:  # raw vector
            array = np.asarray(t.value, dtype=np.float32).reshape(-1)
            if array.shape[0] != vf.dims:
                raise ValueError(f"vector field {vf.name!r} has {vf.dims} dimensions, the query vector has {array.shape[0]}")
            vectors.append(array)
        weights.append(t.weight)
    return field_name, combine(vectors, weights, normalise=vf.exact_metric == "cosine")


def run(index: "Index", request: SearchRequest) -> SearchResponse:
    _validate(request)
    terms = query_terms(request)
    node = resolve_filter(index, request.filter)
    if not terms and not request.vector_queries:
        return _browse(index, request, node)
    words = keyword_text(terms)
    has_keyword_fields = any(f.searchable for f in index.spec.fields)
    only_plain_text = bool(terms) and all(t.kind == "text" for t in terms)
    mode = request.mode or ("hybrid" if words and has_keyword_fields and only_plain_text else "vector")
    if mode in ("keyword", "hybrid") and not words:
        raise ValueError(f"{mode} search needs query text")
    if mode == "keyword" and request.vector_queries:
        raise ValueError("keyword mode does not use vector queries: drop them or choose vector or hybrid mode")
    window = request.skip + request.top

    # Each ranked list: the query expression's vector, the keyword matches, one per extra vector query.
    searches: list[tuple[str, Sequence[Term], str | None, int, QueryOptions]] = []
    weights = dict(request.weights)
    if mode in ("vector", "hybrid") and terms:
        searches.append(("vector", terms, request.field, window, request.options))
    for i, vq in enumerate(request.vector_queries, 1):
        name = f"vector_query_{i}"
        vq_terms = query_terms(SearchRequest(text=vq.text, image=vq.image, ids=vq.ids, vector=vq.vector))
        if not vq_terms:
            raise ValueError(f"vector query {i} is empty: give it text, an image, ids or a vector")
        options = replace(request.options, exact=True) if vq.exact else request.options
        searches.append((name, vq_terms, vq.field, min(MAX_WINDOW, max(window, vq.k or 0)), options))
        weights[name] = vq.weight
    fuse = len(searches) + (mode != "vector") > 1
    depth_floor = FUSION_DEPTH if fuse else 0

    complete, reason = True, None
    lists: dict[str, list[tuple[str, float]]] = {}
    vector_hits: dict[str, Hit] = {}
    first: SearchResult | None = None
    for name, list_terms, field_name, depth, options in searches:
        field_name, vector = resolve_vector(index, list_terms, field_name)
        with index.db.connection() as conn:
            result = index.table.search(conn, field_name, vector, min(MAX_WINDOW, max(depth, depth_floor)),
                                        filter=node, options=options)
        if first is None:
            first, complete, reason = result, result.complete, result.reason
        lists[name] = [(h.id, h.score) for h in result.hits]
        for h in result.hits:
            vector_hits.setdefault(h.id, h)
    if mode in ("keyword", "hybrid"):
        with index.db.connection() as conn:
            lists["keyword"] = index.table.keyword_search(conn, words, max(window, depth_floor), filter=node)

    if fuse:
        fused = reciprocal_rank_fusion(lists, weights)
        with index.db.connection() as conn:
            documents = index.table.fetch(conn, [f.id for f in fused if f.id not in vector_hits])
        hits = []
        for f in fused:
            base = vector_hits.get(f.id)
            document = base.document if base else documents.get(f.id, {})
            hits.append(Hit(f.id, f.score, base.distance if base else float("nan"), document, f.subscores))
    elif mode == "keyword":
        with index.db.connection() as conn:
            documents = index.table.fetch(conn, [key for key, _ in lists["keyword"]])
        hits = [Hit(key, score, float("nan"), documents.get(key, {})) for key, score in lists["keyword"]]
        complete = len(hits) >= window
        reason = None if complete else "fewer_matches"
    else:
        hits = list(first.hits)

    keep = request.cutoff.apply([h.score for h in hits])
    relevant = hits[:keep]
    for key, descending in reversed(list(request.sort)):
        spec_field = index.spec.field(key)
        if not spec_field.sortable:
            raise ValueError(f"field {key!r} is not sortable in index {index.name!r}")
        relevant = sort_hits(relevant, key, descending)
    page = relevant[request.skip : request.skip + request.top]
    facets = {}
    if request.facets:
        cut = keep < len(hits) or request.cutoff != Cutoff()
        facets = count_facets(index, request.facets, node, [h.id for h in relevant] if cut else None)
    return SearchResponse(page, "hybrid" if "keyword" in lists and fuse else mode, len(relevant), complete, reason,
                          facets)


def _browse(index: "Index", request: SearchRequest, node: Filter | None) -> SearchResponse:
    """No query: every document passing the filter, newest first (photos: by date taken), with an exact total."""
    if request.mode is not None:
        raise ValueError(f"{request.mode} search needs a query: give search text, an image, ids or a vector")
    sort = list(request.sort) or list(BROWSE_ORDER.get(index.spec.kind, ()))
    with index.db.connection() as conn:
        rows, total = index.table.browse(conn, request.top, request.skip, filter=node, sort=sort)
    hits = [Hit(key, 1.0, float("nan"), document) for key, document in rows]
    facets = count_facets(index, request.facets, node, None) if request.facets else {}
    return SearchResponse(hits, "browse", total, True, None, facets)

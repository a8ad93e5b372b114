"""One search request, whichever front door it came through, and how it is carried out.

Steps: check the request against the limits -> parse the query terms -> embed texts and images (the model, no
database) -> in one database snapshot: resolve stored ids, retrieve each ranked list (the vector lists and/or the
keyword list), fetch documents, count facets -> fuse the lists (RRF) -> cut the irrelevant tail -> sort -> page.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import psycopg
from PIL import Image

from pixsearch.limits import MAX_FACETS, MAX_QUERY_CHARS, MAX_QUERY_IDS, MAX_TOP, MAX_VECTOR_QUERIES, MAX_WINDOW
from pixsearch.search.context import FileTermRefused, IndexModel, SearchContext
from pixsearch.search.expressions import Term, combine, parse_query
from pixsearch.search.facets import count_facets
from pixsearch.search.ranking import Cutoff, reciprocal_rank_fusion, sort_hits
from pixsearch.store import Filter, Hit, QueryOptions, SchemaError, SearchResult, read_snapshot
from pixsearch.store.schema import BROWSE_ORDER, CAPTION_FIELD
from pixsearch.store.tables import HitList

MODES = ("vector", "keyword", "hybrid")
FUSION_DEPTH = 50  # each list contributes at least this many candidates to hybrid fusion
SORTED_DEPTH = 200  # ranked hits a sorted search with a cutoff (e.g. newest first) cuts and sorts, whatever the page


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
    mode:    vector | keyword | hybrid; default hybrid for text queries on indexes with searchable fields. On an
             index without a model, text is matched as keywords only (as Azure AI Search does).
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
    hide_irrelevant: bool = False  # drop text-query hits the model's calibrated relevance calls clearly irrelevant
    regions: str | None = None  # "images": photos by their best region (with its box); "regions": every region


@dataclass
class SearchResponse(HitList):
    hits: list[Hit]
    mode: str
    total: int  # relevant hits before paging (after the cut)
    complete: bool = True
    reason: str | None = None
    facets: dict[str, list[dict[str, Any]]] = dataclass_field(default_factory=dict)
    hidden: int = 0  # hits dropped as clearly irrelevant (hide_irrelevant)
    building: dict[str, Any] | None = None  # a bulk load is rebuilding the ANN index: searches are exact meanwhile


def validate(request: SearchRequest) -> None:
    """The bounds every front door shares (pixsearch.limits)."""
    if not 1 <= request.top <= MAX_TOP:
        raise ValueError(f"top must be between 1 and {MAX_TOP}, got {request.top}")
    if request.skip < 0:
        raise ValueError("skip cannot be negative")
    if request.skip + request.top > MAX_WINDOW:
        raise ValueError(f"skip + top must be at most {MAX_WINDOW}: refine the query or the filter instead")
    if request.mode is not None and request.mode not in MODES:
        raise ValueError(f"unknown mode {request.mode!r}; use one of {', '.join(MODES)}")
    if request.regions not in (None, "images", "regions"):
        raise ValueError(f"regions must be 'images' or 'regions', got {request.regions!r}")
    if len(request.facets) > MAX_FACETS:
        raise ValueError(f"at most {MAX_FACETS} facets per search, got {len(request.facets)}")
    if len(request.vector_queries) > MAX_VECTOR_QUERIES:
        raise ValueError(f"at most {MAX_VECTOR_QUERIES} vector queries per search, got {len(request.vector_queries)}")
    texts = [request.text] + [vq.text for vq in request.vector_queries]
    for text in texts:
        if text is None:
            continue
        if len(text) > MAX_QUERY_CHARS:
            raise ValueError(f"search text is limited to {MAX_QUERY_CHARS} characters, got {len(text)}")
        if "\x00" in text:
            raise ValueError("search text cannot contain NUL characters")
    if isinstance(request.filter, str) and "\x00" in request.filter:
        raise ValueError("a filter cannot contain NUL characters")
    for key in [*(request.ids or ()), *(i for vq in request.vector_queries for i in (vq.ids or ()))]:
        if not isinstance(key, str) or "\x00" in key:
            raise ValueError("ids must be strings without NUL characters")


def query_terms(request: SearchRequest | VectorQuery) -> list[Term]:
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


def _check_terms(ctx: SearchContext, all_terms: Sequence[Sequence[Term]]) -> None:
    ids = 0
    for terms in all_terms:
        for t in terms:
            if t.kind == "image" and isinstance(t.value, (str, Path)) and not ctx.allow_file_terms:
                raise FileTermRefused()
            ids += 1 if t.kind == "id" else len(t.value) if t.kind == "ids" else 0
    if ids > MAX_QUERY_IDS:
        raise ValueError(f"at most {MAX_QUERY_IDS} stored ids per search, got {ids}")


def keyword_text(terms: Sequence[Term]) -> str | None:
    """The words keyword search looks for: the positive text terms."""
    words = [t.value for t in terms if t.kind == "text" and t.weight > 0]
    return " ".join(words) if words else None


@dataclass
class _Embedded:
    """A list's terms with everything the model can do done: each term's vector, or None for stored ids, which are
    read in the search's snapshot."""

    field: str
    terms: list[Term]
    vectors: list[np.ndarray | None]


def _choose_field(ctx: SearchContext, terms: Sequence[Term], field_name: str | None) -> str:
    """The field given; else images and stored ids without text search the image space ("more like this": looks,
    not only meaning), and anything with text searches the text space."""
    if field_name is not None:
        return ctx.spec.vector_field(field_name).name
    if ctx.model is None:
        return ctx.spec.vector_field(None).name
    model = ctx.model()
    if {t.kind for t in terms} <= {"image", "id", "ids"} or model.text_field is None:
        return model.image_field
    return model.text_field


def embed_terms(ctx: SearchContext, terms: Sequence[Term], field_name: str | None) -> _Embedded:
    """Embed the texts and images of one list (cached per model and text / image content)."""
    field_name = _choose_field(ctx, terms, field_name)
    vf = ctx.spec.vector_field(field_name)
    vectors: list[np.ndarray | None] = []
    for t in terms:
        if t.kind in ("text", "image"):
            model = _model_for(ctx, vf, t.kind)
            if t.kind == "text":
                if field_name != model.text_field:
                    raise ValueError(f"text cannot be searched in the {field_name!r} field; use {model.text_field!r}")
                text = t.value
                vectors.append(ctx.query_vectors.get(("text", model.model_id, text), lambda: model.embed_text(text)))
            else:
                vectors.append(_embed_image(ctx, model, t.value)[field_name])
        elif t.kind in ("id", "ids"):
            vectors.append(None)
        else:  # raw vector
            array = np.asarray(t.value, dtype=np.float32).reshape(-1)
            if array.shape[0] != vf.dims:
                raise ValueError(f"vector field {vf.name!r} has {vf.dims} dimensions, the query vector has {array.shape[0]}")
            vectors.append(array)
    return _Embedded(field_name, list(terms), vectors)


def _model_for(ctx: SearchContext, vf, kind: str) -> IndexModel:
    what = "text" if kind == "text" else "images"
    if ctx.model is None or not vf.model_id:
        raise SchemaError(f"index {ctx.spec.name!r} has no model to embed {what}: search it with a vector")
    model = ctx.model()
    if vf.name not in model.columns.values():
        raise ValueError(f"the {vf.name!r} field holds vectors of an earlier model ({vf.model_id}): search it with "
                         "stored ids or a vector, or search the current model's field")
    return model


def _embed_image(ctx: SearchContext, model: IndexModel, image: str | Path | bytes | Image.Image) -> dict[str, np.ndarray]:
    def embed() -> dict[str, np.ndarray]:
        return model.embed_image(image if isinstance(image, Image.Image) else ctx.open_image(image))

    if isinstance(image, (bytes, bytearray)):  # uploads: the same bytes come back for every page
        digest = hashlib.blake2b(image, digest_size=16).digest()
        return ctx.query_vectors.get(("image", model.model_id, digest, tuple(sorted(model.columns.items()))), embed)
    return embed()


def combine_embedded(ctx: SearchContext, conn: psycopg.Connection, embedded: _Embedded) -> np.ndarray:
    """The list's query vector: stored ids' vectors read (their mean per term), all terms weighted and summed."""
    vf = ctx.spec.vector_field(embedded.field)
    needed = [key for t in embedded.terms if t.kind in ("id", "ids") for key in _keys(t)]
    stored = ctx.table.select(conn, needed, [vf.name]) if needed else {}
    vectors = []
    for t, vector in zip(embedded.terms, embedded.vectors):
        if vector is None:
            keys = _keys(t)
            missing = [key for key in keys if key not in stored]
            if missing:
                raise ValueError(f"unknown id(s) in index {ctx.spec.name!r}: {', '.join(missing)}")
            items = [stored[key].get(vf.name) for key in keys]
            if any(v is None for v in items):
                raise ValueError(f"some of {', '.join(keys)} have no {vf.name!r} vector")
            vector = np.mean(np.stack([np.asarray(v.to_numpy(), dtype=np.float32) for v in items]), axis=0)
        vectors.append(vector)
    return combine(vectors, [t.weight for t in embedded.terms], normalise=vf.exact_metric == "cosine")


def _keys(term: Term) -> list[str]:
    return [term.value] if term.kind == "id" else list(term.value)


def resolve_filter(value: str | Filter | None) -> Filter | None:
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str):
        from pixsearch.search.odata import parse_filter

        return parse_filter(value)
    return value


@dataclass
class _List:
    name: str
    embedded: _Embedded
    depth: int
    options: QueryOptions


def run(ctx: SearchContext, request: SearchRequest) -> SearchResponse:
    validate(request)
    if len(request.sort) > ctx.spec.field_count:  # each sort key costs a pass over the hits (or an ORDER BY term)
        raise ValueError(f"sort: {len(request.sort)} keys, but index {ctx.spec.name!r} has {ctx.spec.field_count} "
                         "fields; name each at most once")
    terms = query_terms(request)
    vq_terms = [query_terms(vq) for vq in request.vector_queries]
    _check_terms(ctx, [terms, *vq_terms])
    node = resolve_filter(request.filter)
    if request.regions:
        return _search_regions(ctx, request, terms, node)
    if not terms and not request.vector_queries:
        return _browse(ctx, request, node)
    words = keyword_text(terms)
    has_keyword_fields = any(f.searchable for f in ctx.spec.fields)
    only_plain_text = bool(terms) and all(t.kind == "text" for t in terms)
    embeddable = ctx.model is not None
    if not embeddable and only_plain_text and request.mode in (None, "hybrid", "keyword") and has_keyword_fields:
        # No model to embed the text: it is keywords, fused with any vector queries (Azure's behaviour).
        mode, vector_terms = ("hybrid" if request.vector_queries else "keyword"), []
    else:
        mode = request.mode or ("hybrid" if words and has_keyword_fields and only_plain_text else "vector")
        vector_terms = terms
    if mode in ("keyword", "hybrid") and not words:
        raise ValueError(f"{mode} search needs query text")
    if mode == "keyword" and request.vector_queries and embeddable:
        raise ValueError("keyword mode does not use vector queries: drop them or choose vector or hybrid mode")
    window = request.skip + request.top

    # Each ranked list: the query expression's vector, the photos' captions for hybrid text, one per extra vector
    # query; the keyword matches (and each field's keyword list of its own, e.g. text read by OCR) below.
    lists: list[_List] = []
    weights = dict(request.weights)
    if mode in ("vector", "hybrid") and vector_terms:
        main = embed_terms(ctx, vector_terms, request.field)
        lists.append(_List("vector", main, window, request.options))
        if mode == "hybrid" and request.field is None and _captions_searchable(ctx, main):
            lists.append(_List(CAPTION_FIELD, _Embedded(CAPTION_FIELD, main.terms, main.vectors), window,
                               request.options))
    for i, (vq, q_terms) in enumerate(zip(request.vector_queries, vq_terms), 1):
        if not q_terms:
            raise ValueError(f"vector query {i} is empty: give it text, an image, ids or a vector")
        options = replace(request.options, exact=True) if vq.exact else request.options
        name = f"vector_query_{i}"
        lists.append(_List(name, embed_terms(ctx, q_terms, vq.field), min(MAX_WINDOW, max(window, vq.k or 0)), options))
        weights[name] = vq.weight
    own_keyword_lists = sorted({f.keyword_list for f in ctx.spec.fields if f.keyword_list}) if words else []
    if mode == "vector":
        own_keyword_lists = []
    fuse = len(lists) + (mode != "vector") + len(own_keyword_lists) > 1
    # Relevant hits sorted (a cutoff, then orderby, as the page's "newest first" asks): the same hits on every page,
    # cut from a fixed depth rather than the window. Without a cutoff the window is the set, as in Azure.
    sorted_relevant = bool(request.sort) and request.cutoff != Cutoff()
    depth_floor = max(FUSION_DEPTH if fuse else 0, SORTED_DEPTH if sorted_relevant else 0)

    complete, reason = True, None
    ranked: dict[str, list[tuple[str, float]]] = {}
    vector_hits: dict[str, Hit] = {}
    first: SearchResult | None = None
    hidden = 0
    with read_snapshot(ctx.db) as conn:
        for item in lists:
            vector = combine_embedded(ctx, conn, item.embedded)
            result = ctx.table.search(conn, item.embedded.field, vector, min(MAX_WINDOW, max(item.depth, depth_floor)),
                                      filter=node, options=item.options)
            if item.name == CAPTION_FIELD:  # kNN always finds some caption: only captions about the query count
                floor = _caption_floor(ctx, vector)
                result.hits = [h for h in result.hits if h.score >= floor]
            elif request.hide_irrelevant:
                hidden += _drop_irrelevant(ctx, item.embedded, vector, result)
            if first is None:
                first, complete, reason = result, result.complete, result.reason
            ranked[item.name] = [(h.id, h.score) for h in result.hits]
            for h in result.hits:
                vector_hits.setdefault(h.id, h)
        if mode in ("keyword", "hybrid"):
            if any(f.searchable for f in ctx.spec.fields):
                ranked["keyword"] = ctx.table.keyword_search(conn, words, max(window, depth_floor), filter=node)
            for name in own_keyword_lists:
                ranked[name] = ctx.table.keyword_search(conn, words, max(window, depth_floor), filter=node,
                                                        keyword_list=name)

        if fuse:
            fused = reciprocal_rank_fusion(ranked, weights)
            documents = ctx.table.fetch(conn, [f.id for f in fused if f.id not in vector_hits])
            hits = []
            for f in fused:
                base = vector_hits.get(f.id)
                document = base.document if base else documents.get(f.id, {})
                hits.append(Hit(f.id, f.score, base.distance if base else float("nan"), document, f.subscores))
        elif mode == "keyword":
            only = next(iter(ranked.values()))
            documents = ctx.table.fetch(conn, [key for key, _ in only])
            hits = [Hit(key, score, float("nan"), documents.get(key, {})) for key, score in only]
            complete = len(hits) >= window
            reason = None if complete else "fewer_matches"
        else:
            hits = list(first.hits)

        keep = request.cutoff.apply([h.score for h in hits])
        relevant = hits[:keep]
        for key, descending in reversed(list(request.sort)):
            if not ctx.spec.field(key).sortable:
                raise ValueError(f"field {key!r} is not sortable in index {ctx.spec.name!r}")
            relevant = sort_hits(relevant, key, descending)
        page = relevant[request.skip : request.skip + request.top]
        facets = {}
        if request.facets:
            cut = keep < len(hits) or request.cutoff != Cutoff()
            facets = count_facets(ctx.table, conn, request.facets, node, [h.id for h in relevant] if cut else None)
        building = _building(ctx, conn) if lists else None
    keyword_ranked = "keyword" in ranked or any(name in ranked for name in own_keyword_lists)
    return SearchResponse(page, "hybrid" if keyword_ranked and fuse and lists else mode, len(relevant), complete,
                          reason, facets, hidden, building)


REGION_DEPTH = 5  # region candidates per wanted photo when photos are ranked by their best region


def _search_regions(ctx: SearchContext, request: SearchRequest, terms: Sequence[Term],
                    node: Filter | None) -> SearchResponse:
    """kNN over the index's regions instead of whole photos. "images": each photo once, by its best region, with
    that region's box; "regions": every matching region. The filter applies to region fields (label, score...)."""
    if ctx.regions is None:
        raise ValueError(f"index {ctx.spec.name!r} has no regions: add some (pixsearch index PATH --regions grid)")
    if not terms or request.vector_queries:
        raise ValueError("a region search takes one query (text, image, ids or a vector), without vector queries")
    embedded = embed_terms(ctx, terms, request.field)
    window = request.skip + request.top
    per_photo = request.regions == "images"
    with read_snapshot(ctx.db) as conn:
        vector = combine_embedded(ctx, conn, embedded)
        depth = min(MAX_WINDOW * REGION_DEPTH, window * (REGION_DEPTH if per_photo else 1))
        result = ctx.regions.search(conn, embedded.field, vector, depth, filter=node, options=request.options)
        found: list[Hit] = []
        seen: set[str] = set()
        for h in result.hits:
            photo = h.document["photo_key"]
            if per_photo and photo in seen:
                continue
            seen.add(photo)
            region = {"id": h.document["region"], "label": h.document["label"], "score": h.document["score"],
                      "box": [h.document["x0"], h.document["y0"], h.document["x1"], h.document["y1"]]}
            found.append(Hit(photo if per_photo else h.id, h.score, h.distance, {}, region=region))
        found = found[:window]
        documents = ctx.table.fetch(conn, list({h.id if per_photo else h.id.split(":", 1)[0] for h in found}))
    for h in found:
        h.document = documents.get(h.id if per_photo else h.id.split(":", 1)[0], {})
    page = found[request.skip : request.skip + request.top]
    return SearchResponse(page, f"regions/{request.regions}", len(found), len(found) >= window,
                          None if len(found) >= window else "fewer_matches")


def _building(ctx: SearchContext, conn: psycopg.Connection) -> dict[str, Any] | None:
    """While a bulk load has the ANN indexes down (the index's settings say so), what the build is doing."""
    if not ctx.spec.settings.get("bulk_load"):
        return None
    return ctx.table.build_progress(conn) or {"phase": "loading rows"}


def _captions_searchable(ctx: SearchContext, main: _Embedded) -> bool:
    """Whether the index has caption vectors of the model a text query was embedded with (a caption field left
    from an earlier model is not searched until its captions are embedded again)."""
    caption = next((vf for vf in ctx.spec.vector_fields if vf.name == CAPTION_FIELD), None)
    if caption is None or ctx.model is None or not all(t.kind == "text" for t in main.terms):
        return False
    model = ctx.model()
    text_space = model.embedder.text_space
    return (main.field == model.text_field and text_space is not None
            and caption.model_id == model.embedder.spaces[text_space].model_id)


CAPTION_MARGIN = 0.3  # models without a calibrated caption threshold: this share of the way from baseline to 1


def _caption_floor(ctx: SearchContext, query: np.ndarray) -> float:
    """The text-to-text similarity from which a photo's caption matches the query: the model's calibrated
    `caption_threshold`, else CAPTION_MARGIN of the way from the query's similarity to an empty caption to 1."""
    model = ctx.model()
    threshold = getattr(model.embedder, "caption_threshold", None)
    if threshold is not None:
        return float(threshold)
    empty = ctx.query_vectors.get(("text", model.model_id, ""), lambda: model.embed_text(""))
    baseline = float(np.dot(query, empty))
    return baseline + CAPTION_MARGIN * (1.0 - baseline)


def _drop_irrelevant(ctx: SearchContext, embedded: _Embedded, query: np.ndarray, result: SearchResult) -> int:
    """Drop the hits of a text query that the model's calibrated relevance calls clearly irrelevant (see
    models.base.Relevance); how many were dropped. Image, id and vector queries are never cut: "more like this"
    always has an answer."""
    if ctx.model is None or not any(t.kind == "text" and t.weight > 0 for t in embedded.terms):
        return 0
    model = ctx.model()
    relevance = model.embedder.relevance
    if relevance is None or embedded.field != model.text_field:
        return 0
    kept = [h for h in result.hits if relevance.adjusted(h.score, query) >= relevance.threshold]
    dropped = len(result.hits) - len(kept)
    result.hits = kept
    return dropped


def _browse(ctx: SearchContext, request: SearchRequest, node: Filter | None) -> SearchResponse:
    """No query: every document passing the filter, newest first (photos: by date taken), with an exact total."""
    if request.mode is not None:
        raise ValueError(f"{request.mode} search needs a query: give search text, an image, ids or a vector")
    sort = list(request.sort) or list(BROWSE_ORDER.get(ctx.spec.kind, ()))
    with read_snapshot(ctx.db) as conn:
        rows, total = ctx.table.browse(conn, request.top, request.skip, filter=node, sort=sort)
        facets = count_facets(ctx.table, conn, request.facets, node, None) if request.facets else {}
    hits = [Hit(key, 1.0, float("nan"), document) for key, document in rows]
    return SearchResponse(hits, "browse", total, True, None, facets)

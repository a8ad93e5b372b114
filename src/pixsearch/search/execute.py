"""Carry out a search plan (search/plan.py).

Steps: embed texts and images (the model, no database) -> in one database snapshot, with the index's settings
(tuned knobs, ANN builds, a bulk load under way) as that snapshot sees them: resolve stored ids, retrieve each ranked
list (the vector lists and/or the keyword lists), fetch documents, count facets -> fuse the lists (RRF) -> cut the
irrelevant tail -> sort -> page.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pixsearch.limits import MAX_WINDOW
from pixsearch.search.context import SearchContext
from pixsearch.search.embedding import EmbeddedTerms, combine_embedded, embed_terms
from pixsearch.search.facets import count_facets
from pixsearch.search.plan import KEYWORD, SearchPlan, plan
from pixsearch.search.ranking import Cutoff, reciprocal_rank_fusion, sort_hits
from pixsearch.search.request import SearchRequest, SearchResponse
from pixsearch.store import Hit, QueryOptions, Reader, SearchResult
from pixsearch.store.schema import CAPTION_FIELD

REGION_DEPTH = 5  # region candidates per wanted photo when photos are ranked by their best region
CAPTION_MARGIN = 0.3  # models without a calibrated caption threshold: this share of the way from baseline to 1


def run(ctx: SearchContext, request: SearchRequest) -> SearchResponse:
    """Plan the request against the index's definition (refusing a bad one before any work), then carry it out."""
    return execute(plan(request, ctx.spec, allow_file_terms=ctx.allow_file_terms), ctx)


def execute(search: SearchPlan, ctx: SearchContext) -> SearchResponse:
    if search.kind == "regions":
        return _execute_regions(search, ctx)
    if search.kind == "browse":
        return _execute_browse(search, ctx)
    lists = _embed_lists(search, ctx)
    with ctx.store.reader(current_settings=True) as reader:
        found = _retrieve(search, ctx, reader, lists)
        hits, complete, reason = _merged(search, reader, found)
        keep = search.request.cutoff.apply([h.score for h in hits])
        relevant = hits[:keep]
        for key, descending in reversed(search.sort):
            relevant = sort_hits(relevant, key, descending)
        facets = {}
        if search.facets:
            cut = keep < len(hits) or search.request.cutoff != Cutoff()
            facets = count_facets(reader, search.facets, search.filter, [h.id for h in relevant] if cut else None)
        building = _building(reader) if lists else None
    mode = "hybrid" if search.keyword_lists and search.fuse and lists else search.mode
    return SearchResponse(_page(search, relevant), mode, len(relevant), complete, reason, facets, found.hidden,
                          building)


@dataclass
class _List:
    name: str
    embedded: EmbeddedTerms
    depth: int
    options: QueryOptions


def _embed_lists(search: SearchPlan, ctx: SearchContext) -> list[_List]:
    """Each planned vector list embedded; after the main list of a hybrid text query, the photos' captions, when
    the index has captions of the model the query was embedded with."""
    lists = []
    for item in search.lists:
        embedded = embed_terms(ctx, item.terms, item.field)
        lists.append(_List(item.name, embedded, item.depth, item.options))
        if item.name == "vector" and search.mode == "hybrid" and item.field is None and _captions_searchable(
                ctx, embedded):
            lists.append(_List(CAPTION_FIELD, EmbeddedTerms(CAPTION_FIELD, embedded.terms, embedded.vectors),
                               item.depth, item.options))
    return lists


@dataclass
class _Retrieved:
    """Every ranked list of one search: (id, score) per list, the vector lists' hits (with their documents), the
    first vector list's result (whether it is complete, and why not), the hits dropped as clearly irrelevant."""

    ranked: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    vector_hits: dict[str, Hit] = field(default_factory=dict)
    first: SearchResult | None = None
    hidden: int = 0


def _retrieve(search: SearchPlan, ctx: SearchContext, reader: Reader, lists: Sequence[_List]) -> _Retrieved:
    found = _Retrieved()
    for item in lists:
        vector = combine_embedded(reader, item.embedded)
        result = reader.search(item.embedded.field, vector, min(MAX_WINDOW, max(item.depth, search.depth_floor)),
                               filter=search.filter, options=item.options)
        if item.name == CAPTION_FIELD:  # kNN always finds some caption: only captions about the query count
            floor = _caption_floor(ctx, vector)
            result.hits = [h for h in result.hits if h.score >= floor]
        elif search.request.hide_irrelevant:
            found.hidden += _drop_irrelevant(ctx, item.embedded, vector, result)
        if found.first is None:
            found.first = result
        found.ranked[item.name] = [(h.id, h.score) for h in result.hits]
        for h in result.hits:
            found.vector_hits.setdefault(h.id, h)
    depth = max(search.window, search.depth_floor)
    for name in search.keyword_lists:
        found.ranked[name] = reader.keyword_search(search.words or "", depth, filter=search.filter,
                                                   keyword_list=None if name == KEYWORD else name)
    return found


def _merged(search: SearchPlan, reader: Reader, found: _Retrieved) -> tuple[list[Hit], bool, str | None]:
    """The ranked hits with their documents, whether they are all there were to find, and why not."""
    first = found.first
    complete, reason = (first.complete, first.reason) if first is not None else (True, None)
    if search.fuse:
        fused = reciprocal_rank_fusion(found.ranked, search.weights or {})
        documents = reader.fetch([f.id for f in fused if f.id not in found.vector_hits])
        hits = []
        for f in fused:
            base = found.vector_hits.get(f.id)
            document = base.document if base else documents.get(f.id, {})
            hits.append(Hit(f.id, f.score, base.distance if base else float("nan"), document, f.subscores))
        return hits, complete, reason
    if search.mode == "keyword":
        only = next(iter(found.ranked.values()))
        documents = reader.fetch([key for key, _ in only])
        hits = [Hit(key, score, float("nan"), documents.get(key, {})) for key, score in only]
        complete = len(hits) >= search.window
        return hits, complete, None if complete else "fewer_matches"
    assert first is not None, "a vector search without a vector list"
    return list(first.hits), complete, reason


def _page(search: SearchPlan, hits: Sequence[Hit]) -> list[Hit]:
    """The requested page of hits, their documents cut to the selected fields."""
    return _selected(list(hits[search.request.skip : search.window]), search.request.select)


def _selected(hits: list[Hit], select: Sequence[str] | None) -> list[Hit]:
    if select is not None:
        for h in hits:
            h.document = {name: h.document[name] for name in select if name in h.document}
    return hits


def _execute_regions(search: SearchPlan, ctx: SearchContext) -> SearchResponse:
    """kNN over the index's regions instead of whole photos. "images": each photo once, by its best region, with
    that region's box; "regions": every matching region. The filter applies to region fields (label, score...)."""
    request = search.request
    embedded = embed_terms(ctx, search.terms, request.field)
    window = search.window
    per_photo = request.regions == "images"
    with ctx.store.reader(current_settings=True) as reader:
        vector = combine_embedded(reader, embedded)
        depth = min(MAX_WINDOW * REGION_DEPTH, window * (REGION_DEPTH if per_photo else 1))
        result = reader.search_regions(embedded.field, vector, depth, filter=search.filter, options=request.options)
        found = _region_hits(result, per_photo)[:window]
        documents = reader.fetch(list({h.id if per_photo else h.id.split(":", 1)[0] for h in found}))
    for h in found:
        h.document = documents.get(h.id if per_photo else h.id.split(":", 1)[0], {})
    return SearchResponse(_page(search, found), f"regions/{request.regions}", len(found), len(found) >= window,
                          None if len(found) >= window else "fewer_matches")


def _region_hits(result: SearchResult, per_photo: bool) -> list[Hit]:
    """Region hits as photo hits carrying their region (per_photo: each photo once, by its best region)."""
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
    return found


def _execute_browse(search: SearchPlan, ctx: SearchContext) -> SearchResponse:
    """No query: every document passing the filter, in the plan's order (photos: newest taken first), with an
    exact total. Nothing in it depends on the index's settings, so the snapshot does not read them."""
    request = search.request
    with ctx.store.reader() as reader:
        rows, total = reader.browse(request.top, request.skip, filter=search.filter, sort=search.sort)
        facets = count_facets(reader, search.facets, search.filter, None) if search.facets else {}
    hits = [Hit(key, 1.0, float("nan"), document) for key, document in rows]
    return SearchResponse(_selected(hits, request.select), "browse", total, True, None, facets)


def _building(reader: Reader) -> dict[str, Any] | None:
    """While a bulk load has the ANN indexes down (the index's settings say so), what the build is doing."""
    if not reader.spec.settings.get("bulk_load"):
        return None
    return reader.build_progress() or {"phase": "loading rows"}


def _captions_searchable(ctx: SearchContext, main: EmbeddedTerms) -> bool:
    """Whether the index has caption vectors of the model a text query was embedded with (a caption field left
    from an earlier model is not searched until its captions are embedded again)."""
    caption = next((vf for vf in ctx.spec.vector_fields if vf.name == CAPTION_FIELD), None)
    if caption is None or ctx.model is None or not all(t.kind == "text" for t in main.terms):
        return False
    model = ctx.model()
    text_space = model.embedder.text_space
    return (main.field == model.text_field and text_space is not None
            and caption.model_id == model.embedder.spaces[text_space].model_id)


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


def _drop_irrelevant(ctx: SearchContext, embedded: EmbeddedTerms, query: np.ndarray, result: SearchResult) -> int:
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

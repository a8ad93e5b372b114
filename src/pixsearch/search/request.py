"""One search request, whichever front door it came through: what it asks, the bounds every front door shares,
and what comes back.

How a request is carried out: search/plan.py checks it against the limits and the index's definition (no
database, no model), search/execute.py embeds its texts and images and runs it in one database snapshot.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from pixsearch.limits import MAX_FACETS, MAX_QUERY_CHARS, MAX_TOP, MAX_VECTOR_QUERIES, MAX_WINDOW
from pixsearch.search.expressions import Term, parse_query
from pixsearch.search.ranking import Cutoff
from pixsearch.store import Filter, Hit, QueryOptions
from pixsearch.store.tables import HitList

MODES = ("vector", "keyword", "hybrid")


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
    select: Sequence[str] | None = None  # the fields each hit's document keeps (None: every retrievable field)


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


def keyword_text(terms: Sequence[Term]) -> str | None:
    """The words keyword search looks for: the positive text terms."""
    words = [t.value for t in terms if t.kind == "text" and t.weight > 0]
    return " ".join(words) if words else None


def resolve_filter(value: str | Filter | None) -> Filter | None:
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str):
        from pixsearch.search.odata import parse_filter

        return parse_filter(value)
    return value



"""Plan a search: everything about a request that can be checked without a database or a model, checked first.

`plan(request, spec)` refuses a request that breaks a bound (pixsearch.limits) or names what the index lacks (vector,
filter, sort, facet and select fields), parses its query terms and filter, and decides its mode and ranked lists. A
bad request is refused before any model is loaded or any query runs; search/execute.py then carries the plan out.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from pixsearch.limits import MAX_QUERY_IDS, MAX_WINDOW
from pixsearch.search.context import FileTermRefused
from pixsearch.search.expressions import Term
from pixsearch.search.facets import FacetRequest, check_facet, parse_facet
from pixsearch.search.ranking import Cutoff
from pixsearch.search.request import SearchRequest, keyword_text, query_terms, resolve_filter, validate
from pixsearch.store import Filter, IndexSpec, QueryOptions, SchemaError, check_filter
from pixsearch.store.regions import region_spec
from pixsearch.store.schema import BROWSE_ORDER

FUSION_DEPTH = 50  # each list contributes at least this many candidates to hybrid fusion
SORTED_DEPTH = 200  # ranked hits a sorted search with a cutoff (e.g. newest first) cuts and sorts, whatever the page
KEYWORD = "keyword"  # the ranked list of the index's searchable fields (fields with a keyword list have their own)


@dataclass(frozen=True)
class ListPlan:
    """One ranked vector list: its query terms, the vector field asked for (None: the model chooses from the
    terms), how many neighbours it retrieves, with which options."""

    name: str
    terms: tuple[Term, ...]
    field: str | None
    depth: int
    options: QueryOptions


@dataclass(frozen=True)
class SearchPlan:
    """A checked request and how it will be carried out.

    kind:    "search" (ranked lists), "browse" (no query: what passes the filter, in `sort` order) or "regions".
    lists:   the vector lists; a hybrid text query on photos also searches their captions, once the model has chosen
             the main list's field (execute.py).
    keyword_lists: the keyword lists searched for `words`: KEYWORD (the searchable fields) and fields' own lists.
    fuse:    whether the ranked lists are fused (RRF), with at least `depth_floor` candidates each.
    sort:    (field, descending) applied after the relevance cut (browse: the listing's order).
    """

    request: SearchRequest
    kind: str
    terms: tuple[Term, ...]
    filter: Filter | None
    facets: tuple[FacetRequest, ...] = ()
    sort: tuple[tuple[str, bool], ...] = ()
    mode: str = "vector"
    words: str | None = None
    lists: tuple[ListPlan, ...] = ()
    keyword_lists: tuple[str, ...] = ()
    weights: dict[str, float] | None = None
    fuse: bool = False
    depth_floor: int = 0

    @property
    def window(self) -> int:
        """The hits up to the end of the requested page."""
        return self.request.skip + self.request.top


def plan(request: SearchRequest, spec: IndexSpec, *, allow_file_terms: bool = True) -> SearchPlan:
    """Check `request` against the limits and the index `spec` and decide how to carry it out; raises ValueError
    (FilterError, SchemaError, FileTermRefused...) naming what is wrong. allow_file_terms=False refuses `image:PATH`
    terms (requests from the network)."""
    if request.select is not None:
        check_select(spec, request.select, allow_vectors=False)
    validate(request)
    if len(request.sort) > spec.field_count:  # each sort key costs a pass over the hits (or an ORDER BY term)
        raise ValueError(f"sort: {len(request.sort)} keys, but index {spec.name!r} has {spec.field_count} fields; "
                         "name each at most once")
    terms = query_terms(request)
    vq_terms = [query_terms(vq) for vq in request.vector_queries]
    _check_terms([terms, *vq_terms], allow_file_terms)
    node = resolve_filter(request.filter)
    if request.regions:
        return _plan_regions(request, spec, terms, node)
    check_filter(spec, node)
    facets = tuple(parse_facet(f) for f in request.facets)
    for facet in facets:
        check_facet(spec, facet)
    check_sort(spec, request.sort)
    if not terms and not request.vector_queries:
        if request.mode is not None:
            raise ValueError(f"{request.mode} search needs a query: give search text, an image, ids or a vector")
        sort = tuple(request.sort) or BROWSE_ORDER.get(spec.kind, ())
        return SearchPlan(request, "browse", (), node, facets, sort)
    return _plan_search(request, spec, terms, vq_terms, node, facets)


def _plan_search(request: SearchRequest, spec: IndexSpec, terms: list[Term], vq_terms: list[list[Term]],
                 node: Filter | None, facets: tuple[FacetRequest, ...]) -> SearchPlan:
    """The mode and the ranked lists of a query: the query expression's vector list, one per extra vector query,
    the keyword lists (the searchable fields', and each field's own, e.g. text read by OCR)."""
    mode, vector_terms = _mode(request, spec, terms)
    words = keyword_text(terms)
    if mode in ("keyword", "hybrid") and not words:
        raise ValueError(f"{mode} search needs query text")
    if mode == "keyword" and request.vector_queries and _modelled(spec):
        raise ValueError("keyword mode does not use vector queries: drop them or choose vector or hybrid mode")
    window = request.skip + request.top
    lists: list[ListPlan] = []
    weights = dict(request.weights)
    if mode in ("vector", "hybrid") and vector_terms:
        lists.append(ListPlan("vector", tuple(vector_terms), _vector_field(spec, request.field), window,
                              request.options))
    for i, (vq, q_terms) in enumerate(zip(request.vector_queries, vq_terms), 1):
        if not q_terms:
            raise ValueError(f"vector query {i} is empty: give it text, an image, ids or a vector")
        options = replace(request.options, exact=True) if vq.exact else request.options
        name = f"vector_query_{i}"
        lists.append(ListPlan(name, tuple(q_terms), _vector_field(spec, vq.field),
                              min(MAX_WINDOW, max(window, vq.k or 0)), options))
        weights[name] = vq.weight
    own_keyword_lists = sorted({f.keyword_list for f in spec.fields if f.keyword_list}) if mode != "vector" else []
    keyword_lists: list[str] = []
    if mode in ("keyword", "hybrid"):
        keyword_lists = ([KEYWORD] if any(f.searchable for f in spec.fields) else []) + own_keyword_lists
        if mode == "keyword" and not keyword_lists:
            raise ValueError(f"index {spec.name!r} has no searchable fields: search it in vector mode")
    fuse = len(lists) + (mode != "vector") + len(own_keyword_lists) > 1
    # Relevant hits sorted (a cutoff, then orderby, as the page's "newest first" asks): the same hits on every page,
    # cut from a fixed depth rather than the window. Without a cutoff the window is the set, as in Azure.
    sorted_relevant = bool(request.sort) and request.cutoff != Cutoff()
    depth_floor = max(FUSION_DEPTH if fuse else 0, SORTED_DEPTH if sorted_relevant else 0)
    return SearchPlan(request, "search", tuple(terms), node, facets, tuple(request.sort), mode, words, tuple(lists),
                      tuple(keyword_lists), weights, fuse, depth_floor)


def _mode(request: SearchRequest, spec: IndexSpec, terms: list[Term]) -> tuple[str, list[Term]]:
    """The search mode and the terms embedded for the vector list. Without a model to embed it, plain text is
    keywords, fused with any vector queries (Azure's behaviour); otherwise text on an index with searchable fields
    is hybrid, anything else vector."""
    has_keyword_fields = any(f.searchable for f in spec.fields)
    only_plain_text = bool(terms) and all(t.kind == "text" for t in terms)
    if (not _modelled(spec) and only_plain_text and request.mode in (None, "hybrid", "keyword")
            and has_keyword_fields):
        return ("hybrid" if request.vector_queries else "keyword"), []
    words = keyword_text(terms)
    return request.mode or ("hybrid" if words and has_keyword_fields and only_plain_text else "vector"), terms


def _plan_regions(request: SearchRequest, spec: IndexSpec, terms: list[Term], node: Filter | None) -> SearchPlan:
    """kNN over the index's regions: one query, its filter on the region fields (label, score...)."""
    if not spec.settings.get("regions"):
        raise ValueError(f"index {spec.name!r} has no regions: add some (pixsearch index PATH --regions grid)")
    if not terms or request.vector_queries:
        raise ValueError("a region search takes one query (text, image, ids or a vector), without vector queries")
    check_filter(region_spec(spec), node)
    _vector_field(spec, request.field)
    return SearchPlan(request, "regions", tuple(terms), node)


def _modelled(spec: IndexSpec) -> bool:
    """Whether the index has a model to embed texts and images (else it holds precomputed vectors only)."""
    return any(vf.model_id for vf in spec.vector_fields)


def _vector_field(spec: IndexSpec, name: str | None) -> str | None:
    """The vector field a list asks for, checked (None: chosen later from its terms and the model)."""
    return spec.vector_field(name).name if name is not None else None


def _check_terms(all_terms: Sequence[Sequence[Term]], allow_file_terms: bool) -> None:
    ids = 0
    for terms in all_terms:
        for t in terms:
            if t.kind == "image" and isinstance(t.value, (str, Path)) and not allow_file_terms:
                raise FileTermRefused()
            ids += 1 if t.kind == "id" else len(t.value) if t.kind == "ids" else 0
    if ids > MAX_QUERY_IDS:
        raise ValueError(f"at most {MAX_QUERY_IDS} stored ids per search, got {ids}")


def check_sort(spec: IndexSpec, sort: Sequence[tuple[str, bool]]) -> None:
    for name, _ in sort:
        if not spec.field(name).sortable:
            raise SchemaError(f"field {name!r} is not sortable in index {spec.name!r}")


def check_select(spec: IndexSpec, names: Sequence[str], *, allow_vectors: bool) -> None:
    """Raise ValueError unless every name is the key or a retrievable field (or, where allowed, a vector field)."""
    vectors = {v.name for v in spec.vector_fields}
    for n in names:
        if n in vectors:
            if not allow_vectors:
                raise ValueError(f"vector field {n!r} cannot be selected in search results")
            continue
        if n != spec.key_field:
            f = next((f for f in spec.fields if f.name == n), None)
            if f is None:
                raise ValueError(f"select: index {spec.name!r} has no field {n!r}")
            if not f.retrievable:
                raise ValueError(f"select: field {n!r} is not retrievable")

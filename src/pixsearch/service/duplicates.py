"""Near-duplicate groups: pairs of photos within a distance of each other (found through the ANN index, each item's
nearest neighbours, not all pairs), confirmed by their layout (ingest/layout.py: an edited copy keeps the frame, another
shot of a burst does not), joined transitively. Used by `pixsearch duplicates`, the REST API and the Python API."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pixsearch.ingest.layout import same_layout
from pixsearch.limits import MAX_DUPLICATE_GROUPS
from pixsearch.service.core import IndexCore

NEIGHBOURS = 10  # each item's nearest neighbours looked at: a group larger than this still joins through chains
# Cosine distance of the image vectors for models that declare no `duplicate_threshold`: generous, since the layout
# check decides between an edited copy and a similar shot.
DEFAULT_THRESHOLD = 0.15


@dataclass
class DuplicateGroup:
    ids: list[str]
    max_distance: float  # the largest distance of a pair that joined this group
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "max_distance": round(self.max_distance, 6),
                "items": [{"id": i, **{k: v for k, v in self.documents.get(i, {}).items()}} for i in self.ids]}


def default_threshold(index: IndexCore) -> float:
    """The index's model's calibrated duplicate distance, else DEFAULT_THRESHOLD."""
    if not index.modelled:
        return DEFAULT_THRESHOLD
    return float(getattr(index.model().embedder, "duplicate_threshold", None) or DEFAULT_THRESHOLD)


def duplicate_groups(index: IndexCore, threshold: float | None = None, *, field: str | None = None,
                     same_frame: bool = True, with_documents: bool = False,
                     max_groups: int = MAX_DUPLICATE_GROUPS) -> list[DuplicateGroup]:
    """Groups of two or more items whose `field` vectors (default: the model's image field) lie within `threshold`
    distance of a member (default: default_threshold), largest groups first. same_frame: a photo pair also needs the
    same layout (edited copies group, other shots of a burst do not); False groups similar shots too."""
    if threshold is None:
        threshold = default_threshold(index)
    if not 0 <= threshold <= 2:
        raise ValueError("the duplicate threshold is a distance: 0 (identical) to 2")
    if field is None:
        field = index.model().image_field if index.modelled else index.spec.vector_field(None).name
    pairs = index.store.near_pairs(field, threshold, NEIGHBOURS)
    if same_frame and pairs and any(f.name == "layout" for f in index.spec.fields):
        layouts = index.store.select(sorted({k for a, b, _ in pairs for k in (a, b)}), ["layout"])
        pairs = [(a, b, d) for a, b, d in pairs
                 if same_layout(layouts.get(a, {}).get("layout"), layouts.get(b, {}).get("layout"))]
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
    widest: dict[str, float] = {}
    for a, _, distance in pairs:
        widest[root(a)] = max(widest.get(root(a), 0.0), distance)
    members: dict[str, list[str]] = {}
    for item in list(parent):
        members.setdefault(root(item), []).append(item)
    groups = [DuplicateGroup(sorted(ids), widest.get(r, 0.0)) for r, ids in members.items() if len(ids) > 1]
    groups.sort(key=lambda g: (-len(g.ids), g.ids[0]))
    groups = groups[:max_groups]
    if with_documents and groups:
        found = index.get([i for g in groups for i in g.ids], vectors=False)
        for g in groups:
            g.documents = {i: found.get(i, {}) for i in g.ids}
    return groups

"""Near-duplicate groups: pairs of items within a distance of each other (through the ANN index), joined
transitively. Used by `pixsearch duplicates`, the REST API and the Python API."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixsearch.service.index import Index

NEIGHBOURS = 10  # each item's nearest neighbours looked at: a group larger than this still joins through chains


@dataclass
class DuplicateGroup:
    ids: list[str]
    max_distance: float  # the largest distance of a pair that joined this group
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "max_distance": round(self.max_distance, 6),
                "items": [{"id": i, **{k: v for k, v in self.documents.get(i, {}).items()}} for i in self.ids]}


def duplicate_groups(index: "Index", threshold: float, *, field: str | None = None,
                     with_documents: bool = False) -> list[DuplicateGroup]:
    """Groups of two or more items whose `field` vectors (default: the model's image field) lie within
    `threshold` distance of a member, largest groups first."""
    if not 0 <= threshold <= 2:
        raise ValueError("the duplicate threshold is a distance: 0 (identical) to 2")
    if field is None:
        field = index.model().image_field if index.modelled else index.spec.vector_field(None).name
    with index.db.connection() as conn:
        pairs = index.table.near_pairs(conn, field, threshold, NEIGHBOURS)
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
    if with_documents and groups:
        found = index.get([i for g in groups for i in g.ids], vectors=False)
        for g in groups:
            g.documents = {i: found.get(i, {}) for i in g.ids}
    return groups

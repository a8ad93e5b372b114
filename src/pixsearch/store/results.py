"""What searches return (hits, results), the per-query ANN knobs, and the checks a vector passes on its way in."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import numpy as np
from pgvector import HalfVector, Vector

from pixsearch.store.schema import VectorField


@dataclass
class Hit:
    """One search result: the key, a similarity score (higher is better), the raw distance, the stored fields."""

    id: str
    score: float
    distance: float
    document: dict[str, Any] = field(default_factory=dict)
    subscores: dict[str, dict[str, float]] | None = None  # hybrid: per list {"rank", "score"}
    region: dict[str, Any] | None = None  # region searches: {"id", "box": [x0, y0, x1, y1], "label", "score"}

    @property
    def path(self) -> str | None:
        return self.document.get("path")

    @property
    def tags(self) -> list[str]:
        return list(self.document.get("tags") or [])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "score": self.score, "distance": self.distance}
        for key, value in self.document.items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        if self.subscores is not None:
            out["subscores"] = self.subscores
        if self.region is not None:
            out["region"] = self.region
        if out["distance"] != out["distance"]:  # NaN: a keyword-only hit has no vector distance
            out["distance"] = None
        return out


class HitList:
    """Lets a result be used as its list of hits: iterate, index, len()."""

    hits: list[Hit]

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i):
        return self.hits[i]


@dataclass
class SearchResult(HitList):
    """Hits plus whether all k were found; when not, why: only `matching` rows pass the filter, or the
    iterative index scan stopped at its limit (hnsw.max_scan_tuples / ivfflat.max_probes) before finding k."""

    hits: list[Hit]
    k: int
    complete: bool = True
    reason: str | None = None  # None | "fewer_matches" | "scan_limit"
    matching: int | None = None


@dataclass(frozen=True)
class QueryOptions:
    """Per-query ANN knobs; None means the index's tuned value, else pgvector-advised defaults."""

    ef_search: int | None = None
    probes: int | None = None
    max_scan_tuples: int | None = None
    iterative: bool = True
    exact: bool = False


def similarity(metric: str, distance: float, dims: int) -> float:
    """pgvector distance -> similarity where higher is better."""
    if metric == "cosine":
        return 1.0 - distance
    if metric == "ip":
        return -distance  # <#> is the negative inner product
    if metric == "hamming":
        return 1.0 - distance / dims
    if metric == "jaccard":
        return 1.0 - distance
    return 1.0 / (1.0 + distance)  # l2, l1


def as_query_vector(vector: Any, vf: VectorField) -> Vector | HalfVector:
    return _pg_vector(
        vector,
        vf,
        lambda got: f"vector field {vf.name!r} has {vf.dims} dimensions, the query vector has {got}",
        "the query vector contains NaN or infinite values",
    )


def checked_vector(value: Any, vf: VectorField, key: Any) -> Vector | HalfVector:
    """A document's vector checked on its way into the table (its key named in the error)."""
    return _pg_vector(
        value,
        vf,
        lambda got: f"document {key!r}: vector field {vf.name!r} needs {vf.dims} dimensions, got {got}",
        f"document {key!r}: vector field {vf.name!r} contains NaN or infinite values",
    )


def _pg_vector(value: Any, vf: VectorField, wrong_dims: Callable[[int], str], not_finite: str):
    """float32 array checked against the field (width, finiteness) as the column's pgvector type."""
    array = np.asarray(value, dtype=np.float32).reshape(-1)
    if array.shape[0] != vf.dims:
        raise ValueError(wrong_dims(array.shape[0]))
    if not np.all(np.isfinite(array)):
        raise ValueError(not_finite)
    return HalfVector(array) if vf.column_type == "halfvec" else Vector(array)

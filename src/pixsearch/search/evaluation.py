"""Recall you can see and tune: ANN results vs exact search on sampled stored vectors, with latency."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pixsearch.store import IndexStore, QueryOptions, VectorField
from pixsearch.store.tables import MAX_EF_SEARCH

EF_SEARCH_LADDER = (10, 20, 40, 64, 100, 150, 200, 300, 400, 600, 800, 1000)
PROBES_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass
class Evaluation:
    field: str
    k: int
    queries: int
    recall: float
    ann_ms_p50: float
    ann_ms_p95: float
    exact_ms_p50: float
    settings: dict[str, Any] = field(default_factory=dict)
    # Whether the planner used the ANN index at these settings: on small tables a large ef_search can make the
    # exact scan cheaper, and then the recall measured is the exact scan's.
    index_used: bool = True

    def to_json(self) -> dict[str, Any]:
        return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in self.__dict__.items()}


@dataclass
class GroundTruth:
    queries: list[np.ndarray]
    ids: list[list[str]]
    exact_ms: list[float]


def _timed_ids(store: IndexStore, vf: VectorField, q: np.ndarray, k: int, options: QueryOptions):
    t0 = time.perf_counter()
    result = store.search(vf.name, q, k, options=options)
    return [h.id for h in result.hits], (time.perf_counter() - t0) * 1000


def ground_truth(store: IndexStore, vf: VectorField, k: int, sample: int) -> GroundTruth:
    """Sample stored vectors as queries (repeatably) and find their exact top-k by a full scan."""
    rows = store.sample_vectors(vf, sample)
    queries = [np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32) for _, v in rows]
    ids, times = [], []
    for q in queries:
        found, ms = _timed_ids(store, vf, q, k, QueryOptions(exact=True))
        ids.append(found)
        times.append(ms)
    return GroundTruth(queries, ids, times)


def evaluate(store: IndexStore, vf: VectorField, k: int, truth: GroundTruth, options: QueryOptions) -> Evaluation:
    recalls, times = [], []
    for q, expected in zip(truth.queries, truth.ids):
        found, ms = _timed_ids(store, vf, q, k, options)
        times.append(ms)
        if expected:
            recalls.append(recall_at_k(found, expected))
    settings = {key: value for key, value in (("ef_search", options.ef_search), ("probes", options.probes)) if value}
    index_used = True
    if truth.queries:
        plan = store.explain(vf.name, truth.queries[0], k, options=options)
        index_used = f"Index Scan using {store.ann_index_name(vf)}" in plan
    return Evaluation(
        field=vf.name,
        k=k,
        queries=len(truth.queries),
        # Rounded once here, so the target comparison in tune() and the reported value can never disagree
        # (a mean like 0.9499999999999998 must not be "below 0.95" yet print as 0.95).
        recall=round(float(np.mean(recalls)), 4) if recalls else 1.0,
        ann_ms_p50=float(np.percentile(times, 50)) if times else 0.0,
        ann_ms_p95=float(np.percentile(times, 95)) if times else 0.0,
        exact_ms_p50=float(np.percentile(truth.exact_ms, 50)) if truth.exact_ms else 0.0,
        settings=settings,
        index_used=index_used,
    )


def ladder(vf: VectorField, k: int, lists: int | None) -> list[QueryOptions]:
    """The settings tune tries, cheapest first."""
    if vf.algorithm == "hnsw":
        wanted = k * vf.params.get("oversample", 1)
        values = sorted({max(v, min(wanted, MAX_EF_SEARCH)) for v in EF_SEARCH_LADDER})
        return [QueryOptions(ef_search=v) for v in values]
    if vf.algorithm == "ivfflat":
        top = lists or 1
        values = sorted({min(v, top) for v in PROBES_LADDER})
        return [QueryOptions(probes=v) for v in values]
    return []


def tune(
    store: IndexStore, vf: VectorField, k: int, truth: GroundTruth, target: float, lists: int | None
) -> tuple[Evaluation | None, list[Evaluation], bool]:
    """Walk the ladder until recall reaches `target`. Returns (chosen, all tried, reached)."""
    tried: list[Evaluation] = []
    for options in ladder(vf, k, lists):
        result = evaluate(store, vf, k, truth, options)
        tried.append(result)
        if result.recall >= target:
            return result, tried, True
    return (tried[-1] if tried else None), tried, False


def recall_at_k(found: Sequence[str], expected: Sequence[str]) -> float:
    return len(set(found) & set(expected)) / len(expected) if expected else 1.0

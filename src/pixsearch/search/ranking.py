"""Ranking after retrieval: Reciprocal Rank Fusion of ranked lists, relevance cutoffs, sorting and paging."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

RRF_K = 60


@dataclass
class Fused:
    id: str
    score: float
    subscores: dict[str, dict[str, float]] = field(default_factory=dict)  # list -> {"rank", "score"}


def reciprocal_rank_fusion(
    lists: Mapping[str, Sequence[tuple[str, float]]],
    weights: Mapping[str, float] | None = None,
    k: int = RRF_K,
) -> list[Fused]:
    """Fuse ranked lists of (id, score): fused(d) = sum over lists of weight / (k + rank(d)), ranks from 1.

    Ties on the fused score are broken by id so pages stay stable.
    """
    fused: dict[str, Fused] = {}
    for name, ranked in lists.items():
        weight = (weights or {}).get(name, 1.0)
        for rank, (doc_id, score) in enumerate(ranked, 1):
            item = fused.setdefault(doc_id, Fused(doc_id, 0.0))
            item.score += weight / (k + rank)
            item.subscores[name] = {"rank": rank, "score": score}
    return sorted(fused.values(), key=lambda f: (-f.score, f.id))


@dataclass(frozen=True)
class Cutoff:
    """Which hits count as relevant.

    min_score: drop hits scoring below it.
    relative: keep hits scoring at least `relative` x the best score (scores > 0).
    gap: cut after the largest drop between consecutive scores, when that drop is at least `gap_ratio` times the
         mean drop among the hits before the cut — a clear "the rest are about something else" edge.
    """

    min_score: float | None = None
    relative: float | None = None
    gap: bool = False
    gap_ratio: float = 3.0
    min_keep: int = 1

    @classmethod
    def parse(cls, text: str | None, min_score: float | None = None) -> "Cutoff":
        """'gap' or 'relative:F' (0 < F <= 1), as the CLI's --cutoff and the API's cutoff take them."""
        if text is None:
            return cls(min_score=min_score)
        if text == "gap":
            return cls(min_score=min_score, gap=True)
        if text.startswith("relative:"):
            try:
                fraction = float(text.split(":", 1)[1])
            except ValueError:
                fraction = -1.0
            if 0 < fraction <= 1:
                return cls(min_score=min_score, relative=fraction)
        raise ValueError(f"cutoff {text!r}: use 'gap' or 'relative:F' with 0 < F <= 1")

    def apply(self, scores: Sequence[float]) -> int:
        """How many of the (descending) scores to keep."""
        keep = len(scores)
        if self.min_score is not None:
            keep = sum(1 for s in scores if s >= self.min_score)
        if self.relative is not None and scores and scores[0] > 0:
            keep = min(keep, sum(1 for s in scores if s >= self.relative * scores[0]))
        if self.gap and keep > self.min_keep:
            drops = [scores[i] - scores[i + 1] for i in range(keep - 1)]
            if drops:
                at = max(range(len(drops)), key=lambda i: (drops[i], -i))
                typical = sum(drops) / len(drops)
                if typical > 0 and drops[at] >= self.gap_ratio * typical:
                    keep = max(self.min_keep, at + 1)
        return keep


def sort_hits(hits: list[Any], key: str, descending: bool) -> list[Any]:
    """Sort by a document field; missing values go last either way, ties keep relevance order."""
    present = [h for h in hits if h.document.get(key) is not None]
    missing = [h for h in hits if h.document.get(key) is None]
    present.sort(key=lambda h: h.document[key], reverse=descending)
    return present + missing

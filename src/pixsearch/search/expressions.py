"""Query expressions: weighted sums of texts, images, stored ids and raw vectors, combined before the search.

    beach                                  plain text (anything without quotes or term prefixes)
    "beach" + "sunset" - "people"          add and subtract terms
    2:"red car" + "night"                  weights (a number and a colon before a term)
    "dog" + image:photos/rex.jpg           text and image together
    id:3f2a9c... - "snow"                  a stored item's vector, and "more like these" with ids:a,b,c (their mean)

Each term is embedded into the same vector field and the weighted sum is normalised (for cosine fields) before it is
searched. Parsing is pure; embedding happens in the service, which knows the model and the index.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence


class QuerySyntaxError(ValueError):
    def __init__(self, message: str, position: int, text: str):
        self.position = position
        pointer = f'\n  {text}\n  {" " * position}^'
        super().__init__(f"{message} at position {position}:{pointer}")


@dataclass(frozen=True)
class Term:
    """One addend: kind is text | image | id | ids | vector; value is the text, path, id, id list or vector."""

    kind: str
    value: Any
    weight: float = 1.0


_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
_PREFIXES = ("image:", "ids:", "id:")


def _looks_like_expression(text: str) -> bool:
    stripped = text.strip()
    return '"' in stripped or stripped.startswith(_PREFIXES) or re.match(r"^[0-9.]+:", stripped) is not None


def parse_query(text: str) -> list[Term]:
    """Parse a query string into terms. Text without quotes or prefixes is one text term, whatever it holds."""
    if not text or not text.strip():
        raise QuerySyntaxError("empty query", 0, text or "")
    if not _looks_like_expression(text):
        return [Term("text", text.strip())]
    terms: list[Term] = []
    i, n = 0, len(text)
    sign = 1.0
    expect_term = True
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if not expect_term:
            if ch in "+-":
                sign = 1.0 if ch == "+" else -1.0
                expect_term = True
                i += 1
                continue
            raise QuerySyntaxError("expected '+' or '-' between terms", i, text)
        if ch == "-" and not terms and sign == 1.0:  # a leading minus: "-"snow" + "mountain" is allowed
            sign = -1.0
            i += 1
            continue
        weight = 1.0
        number = _NUMBER.match(text, i)
        if number and number.end() < n and text[number.end()] == ":":
            weight = float(number.group())
            i = number.end() + 1
            if weight == 0:
                raise QuerySyntaxError("a weight of 0 removes the term", number.start(), text)
        term, i = _parse_atom(text, i)
        terms.append(Term(term.kind, term.value, sign * weight))
        sign = 1.0
        expect_term = False
    if expect_term:
        raise QuerySyntaxError("expected a term after the operator", n, text)
    if all(t.weight < 0 for t in terms):
        raise QuerySyntaxError("the query only subtracts: add at least one term", 0, text)
    return terms


def _parse_atom(text: str, i: int) -> tuple[Term, int]:
    if text.startswith('"', i):
        end = i + 1
        chunks = []
        while True:
            close = text.find('"', end)
            if close < 0:
                raise QuerySyntaxError("unterminated quoted text", i, text)
            chunks.append(text[end:close])
            if text.startswith('"', close + 1):  # "" inside quotes is a literal quote
                chunks.append('"')
                end = close + 2
                continue
            value = "".join(chunks).strip()
            if not value:
                raise QuerySyntaxError("empty quoted text", i, text)
            return Term("text", value), close + 1
    for prefix in _PREFIXES:
        if text.startswith(prefix, i):
            start = i + len(prefix)
            value, end = _prefixed_value(text, start)
            if not value:
                raise QuerySyntaxError(f"'{prefix}' needs a value", start, text)
            if prefix == "ids:":
                ids = [part for part in value.split(",") if part]
                return Term("ids", tuple(ids)), end
            return Term(prefix[:-1], value), end
    raise QuerySyntaxError('expected a term: "text", image:PATH, id:KEY or ids:A,B', i, text)


def _prefixed_value(text: str, start: int) -> tuple[str, int]:
    """A prefixed value runs to the next whitespace, or is quoted ("..." for paths with spaces)."""
    if text.startswith('"', start):
        close = text.find('"', start + 1)
        if close < 0:
            raise QuerySyntaxError("unterminated quoted value", start, text)
        return text[start + 1 : close], close + 1
    end = start
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end], end


def combine(vectors: Sequence[Any], weights: Sequence[float], normalise: bool = True):
    """Weighted sum of term vectors (each already unit length for cosine spaces), renormalised."""
    import numpy as np

    stacked = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in vectors])
    total = (np.asarray(weights, dtype=np.float64)[:, None] * stacked).sum(axis=0)
    if normalise:
        norm = np.linalg.norm(total)
        if norm < 1e-9:
            raise ValueError("the terms cancel out: the combined query vector is zero")
        total = total / norm
    return total.astype(np.float32)

"""Facet requests in Azure AI Search's form: `tags`, `tags,count:5`, `taken_at,interval:year`."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from pixsearch.limits import MAX_FACET_COUNT as MAX_COUNT
from pixsearch.store import Filter, IndexSpec, Reader, SchemaError

DEFAULT_COUNT = 10


@dataclass(frozen=True)
class FacetRequest:
    """Count the `count` most frequent values of `field` (datetime fields bucketed by `interval`)."""

    field: str
    count: int = DEFAULT_COUNT
    interval: str | None = None


def parse_facet(spec: str) -> FacetRequest:
    """`field[,count:N][,interval:year|month|day]`."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty facet")
    name, count, interval = parts[0], DEFAULT_COUNT, None
    for option in parts[1:]:
        key, _, value = option.partition(":")
        if key == "count" and value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_COUNT:
            count = int(value)
        elif key == "interval" and value in ("year", "month", "day"):
            interval = value
        else:
            raise ValueError(f"facet {spec!r}: unknown option {option!r} (use count:N or interval:year|month|day)")
    return FacetRequest(name, count, interval)


def check_facet(index: IndexSpec, facet: FacetRequest) -> None:
    """Raise SchemaError unless the index can count this facet (a facetable field; intervals on datetimes)."""
    f = index.field(facet.field)
    if not f.facetable:
        raise SchemaError(f"field {facet.field!r} is not facetable in index {index.name!r}")
    if facet.interval is not None and not f.type.endswith("[]") and f.type != "datetime":
        raise SchemaError("interval (year, month, day) applies to datetime fields")


def count_facets(
    reader: Reader, facets: Sequence[FacetRequest], filter: Filter | None, ids: Sequence[str] | None
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for facet in facets:
        pairs = reader.facet_counts(facet.field, interval=facet.interval, limit=facet.count, filter=filter, ids=ids)
        out[facet.field] = [{"value": _plain(value, facet.interval), "count": n} for value, n in pairs]
    return out


def _plain(value: Any, interval: str | None) -> Any:
    if isinstance(value, datetime):
        return {"year": str(value.year), "month": value.strftime("%Y-%m"), "day": value.strftime("%Y-%m-%d")}.get(
            interval or "", value.isoformat()
        )
    return value

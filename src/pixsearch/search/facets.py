"""Facet requests in Azure AI Search's form: `tags`, `tags,count:5`, `taken_at,interval:year`."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

import psycopg

from pixsearch.limits import MAX_FACET_COUNT as MAX_COUNT
from pixsearch.store import DocumentTable, Filter

DEFAULT_COUNT = 10


def parse_facet(spec: str) -> tuple[str, int, str | None]:
    """`field[,count:N][,interval:year|month|day]` -> (field, count, interval)."""
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
    return name, count, interval


def count_facets(
    table: DocumentTable, conn: psycopg.Connection, specs: Sequence[str], filter: Filter | None,
    ids: Sequence[str] | None,
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        name, count, interval = parse_facet(spec)
        pairs = table.facet_counts(conn, name, interval=interval, limit=count, filter=filter, ids=ids)
        out[name] = [{"value": _plain(value, interval), "count": n} for value, n in pairs]
    return out


def _plain(value: Any, interval: str | None) -> Any:
    if isinstance(value, datetime):
        return {"year": str(value.year), "month": value.strftime("%Y-%m"), "day": value.strftime("%Y-%m-%d")}.get(
            interval or "", value.isoformat()
        )
    return value

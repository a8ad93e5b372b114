"""ANN index builds of an index: (re)builds, drops, the bulk-load path, and what a killed load left to build."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from pixsearch.service.core import IndexCore

# When a load is large for its table, the ANN indexes are dropped, the rows loaded, and each index built once:
# inserting into a live HNSW graph row by row is ~5x slower than one build. "Large": at least BULK_MIN_ROWS rows, or
# at least BULK_MIN_SHARE of the rows already there (and BULK_FLOOR rows, so small first batches stay incremental).
BULK_MIN_ROWS = 10_000
BULK_MIN_SHARE = 0.2
BULK_FLOOR = 1_000


def build(index: IndexCore, field: str | None = None, *, progress: Callable[[dict], None] | None = None
          ) -> list[dict[str, Any]]:
    """(Re)build the ANN index of one or all vector fields; remembers what was built (IVFFlat lists)."""
    targets = [index.spec.vector_field(field)] if field else list(index.spec.vector_fields)
    built = []
    for vf in targets:
        if vf.algorithm == "exact":
            continue
        info = index.store.build_index(vf, progress=progress)
        index.store.analyze()
        built.append(info)
        index.update_settings({"built": {vf.name: info}})
    return built


def drop_ann_indexes(index: IndexCore, field: str | None = None) -> list[str]:
    """Drop the ANN index of one or all vector fields; until a build, searches of those fields scan exactly."""
    targets = [index.spec.vector_field(field)] if field else list(index.spec.vector_fields)
    return [index.store.ann_index_name(vf) for vf in targets if index.store.drop_ann_index(vf)]


def ensure_ann_indexes(index: IndexCore) -> list[str]:
    """Build every ANN index that is missing or invalid (after a killed bulk load or a failed concurrent build);
    clears the bulk-load mark. IVFFlat indexes are built only once the table has rows (they learn from them)."""
    ready = index.store.ann_indexes_ready()
    rows = index.store.count() if not all(ready.values()) else None
    built = []
    for name, ok in ready.items():
        vf = index.spec.vector_field(name)
        if ok or (vf.algorithm == "ivfflat" and not rows and not index.spec.settings.get("built", {}).get(name)):
            continue
        build(index, name)
        built.append(name)
    if index.spec.settings.get("bulk_load"):
        index.update_settings({"bulk_load": None})
    return built


def bulk_wanted(index: IndexCore, incoming: int) -> bool:
    """Whether a load of `incoming` rows takes the bulk path (see BULK_MIN_ROWS)."""
    if not any(vf.algorithm != "exact" for vf in index.spec.vector_fields):
        return False
    if incoming >= BULK_MIN_ROWS:
        return True
    return incoming >= BULK_FLOOR and incoming >= BULK_MIN_SHARE * index.count()


@contextmanager
def loading(index: IndexCore, incoming: int) -> Iterator[bool]:
    """Around a load of `incoming` rows: the bulk path when it is large (yields True): ANN indexes dropped
    first and each built once afterwards, even if the load fails. The index's settings mark a bulk load while it
    runs: searches meanwhile are exact scans (correct, slower) and report the build's progress; a load killed in
    between leaves the mark, and the next load (or `pixsearch indexes rebuild`) builds what is missing."""
    ensure_ann_indexes(index)
    if not bulk_wanted(index, incoming):
        yield False
        return
    index.update_settings({"bulk_load": {"started_at": datetime.now(timezone.utc).isoformat(), "rows": incoming}})
    drop_ann_indexes(index)
    try:
        yield True
    finally:
        ensure_ann_indexes(index)

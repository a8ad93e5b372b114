"""Move a photo index to another model without downtime: `pixsearch reindex NAME --model ID`.

1. Plan (once): the new model's vector fields are added as new columns (named after its spaces; `clip_2` when
   `clip` is taken), plus its own photo fields; the plan is recorded in the index's settings (`reindex`).
2. Fill: rows whose new columns are empty are embedded from their stored files in batches, each batch one
   transaction. Searches keep using the old model's fields meanwhile: the index's model does not change yet.
   A killed run resumes where it stopped (rows already filled are not empty any more).
3. Build the new fields' ANN indexes (searches still read the old fields).
4. Switch, atomically: under a lock that blocks writers (not readers), check that nothing is left to fill (rows
   added by a concurrent `pixsearch index` meanwhile are filled first), then record the new model. The next search
   uses the new fields.
5. With drop_old, the old model's vector fields and photo fields are dropped; otherwise they stay, searchable by
   stored ids or raw vectors, for comparison.
Vectors of two models never share a field: every column holds one model's vectors (its model_id).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from pixsearch.ingest import IngestProgress, NoProgress
from pixsearch.ingest.stage import ImageStage, StageOptions
from pixsearch.models import ModelNotAvailableError, model_capabilities
from pixsearch.models.base import Embedder
from pixsearch.service import builds
from pixsearch.service.captions import upgrade_photo_index
from pixsearch.service.core import IndexCore
from pixsearch.service.roots import read_stored_photo
from pixsearch.store import SchemaError, VectorField
from pixsearch.store.registry import RowsStillEmpty
from pixsearch.store.schema import CAPTION_FIELD

MAX_SWITCH_ROUNDS = 5


class _StillToFill(Exception):
    """Rows were added while the switch was prepared: fill them, then try the switch again."""


@dataclass
class ReindexReport:
    model: str
    columns: dict[str, str]  # the new model's space -> the index's vector field
    resumed: bool = False
    embedded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    switched: bool = False
    dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "fields": self.columns, "resumed": self.resumed, "embedded": self.embedded,
                "failed": [{"path": p, "reason": r} for p, r in self.failed], "switched": self.switched,
                "dropped": self.dropped, "seconds": round(self.seconds, 3)}


def reindex(index: IndexCore, model_name: str, *, drop_old: bool = False,
            progress: IngestProgress | None = None) -> ReindexReport:
    started = time.perf_counter()
    progress = progress or NoProgress()
    if index.spec.kind != "photos":
        raise SchemaError(f"index {index.name!r} is not a photo index: only photo indexes have files to re-embed")
    new = index.engine.model(model_name)
    pending = index.spec.settings.get("reindex")
    if pending and pending["model"] != new.name:
        raise SchemaError(
            f"index {index.name!r} is being moved to {pending['model']!r}: finish that (pixsearch reindex "
            f"{index.name} --model {pending['model']}) or undo it (pixsearch reindex {index.name} --abort) first"
        )
    if not pending and index.spec.model == new.name:
        raise SchemaError(f"index {index.name!r} already uses model {new.name!r}")
    report = ReindexReport(model=new.name, columns={}, resumed=bool(pending))
    if not pending:
        _plan(index, new)
    report.columns = dict(index.spec.settings["reindex"]["columns"])
    failed: dict[str, str] = {}
    for _ in range(MAX_SWITCH_ROUNDS):
        report.embedded += _fill(index, new, report.columns, failed, progress)
        _build(index, report.columns)
        try:
            _switch(index, new, report.columns, set(failed))
        except _StillToFill:
            continue
        report.switched = True
        upgrade_photo_index(index)  # the captions, embedded again in the new model's text space
        break
    report.failed = [(path, reason) for path, reason in failed.values()]
    if report.switched and drop_old:
        report.dropped = _drop_old(index, new)
    report.seconds = time.perf_counter() - started
    return report


def abort(index: IndexCore) -> list[str]:
    """Undo a re-index that has not switched: drop the columns it added. Returns their names."""
    pending = index.spec.settings.get("reindex")
    if not pending:
        raise SchemaError(f"no re-index of {index.name!r} is under way")
    added = set(pending["columns"].values()) | set(pending.get("added_fields", []))
    added -= set(pending.get("reused", []))
    spec = index.spec
    index.redefine(
        vector_fields=tuple(vf for vf in spec.vector_fields if vf.name not in added),
        fields=tuple(f for f in spec.fields if f.name not in added),
        model=spec.model, settings_changes={"reindex": None}, drop=tuple(sorted(added)),
    )
    return sorted(added)


def _plan(index: IndexCore, new: Embedder) -> None:
    spec = index.spec
    taken = {vf.name for vf in spec.vector_fields} | {f.name for f in spec.fields}
    added_vectors: list[VectorField] = []
    columns: dict[str, str] = {}
    reused: list[str] = []
    for space in new.spaces.values():
        earlier = next((vf for vf in spec.vector_fields if vf.model_id == space.model_id
                        and vf.space_name == space.name and vf.dims == space.dims), None)
        if earlier is not None:  # moving back to a model whose fields were kept: fill what is missing
            columns[space.name] = earlier.name
            reused.append(earlier.name)
            continue
        name, n = space.name, 2
        while name in taken:
            name, n = f"{space.name}_{n}", n + 1
        taken.add(name)
        added_vectors.append(VectorField(name=name, dims=space.dims, model_id=space.model_id, metric=space.metric,
                                         space=None if name == space.name else space.name))
        columns[space.name] = name
    added_fields = tuple(f for f in new.photo_fields if f.name not in {g.name for g in spec.fields})
    plan = {"model": new.name, "columns": columns, "fields": [f.name for f in new.photo_fields],
            "added_fields": [f.name for f in added_fields], "reused": reused,
            "started_at": datetime.now(timezone.utc).isoformat()}
    index.redefine(
        vector_fields=spec.vector_fields + tuple(added_vectors), fields=spec.fields + added_fields, model=spec.model,
        settings_changes={"reindex": plan}, add=(added_fields, tuple(added_vectors)),
    )


def _fill(index: IndexCore, new: Embedder, columns: dict[str, str], failed: dict[str, tuple[str, str]],
          progress: IngestProgress) -> int:
    """Embed every row whose new columns are empty through the image stage, each batch written in one transaction;
    the number embedded. Rows whose file fails are kept in `failed` (key -> (path, reason)) and not tried again."""
    settings = index.settings
    targets = sorted(set(columns.values()))
    extra_fields = [f.name for f in new.photo_fields]
    total = index.store.count_missing(targets)
    progress.start(max(0, total - len(failed)))
    stage = ImageStage(new, StageOptions(batch_size=settings.batch_size, workers=settings.decode_workers,
                                         max_pixels=settings.max_image_pixels))
    done = 0
    for batch in stage.run(_missing(index, targets, failed), lambda item: read_stored_photo(index, item[1])):
        rows = []
        for result in batch:
            key, path = result.item
            if result.error is not None:
                failed[key] = (path, result.error)
                progress.failure(path, result.error)
                progress.advance()
                continue
            row: dict[str, Any] = {index.spec.key_field: key}
            row.update({columns[space]: vectors[0] for space, vectors in result.embeddings.vectors.items()})
            if result.embeddings.fields:
                row.update({name: result.embeddings.fields[0].get(name) for name in extra_fields})
            rows.append(row)
        if rows:
            index.write_rows(rows, columns=targets + extra_fields, insert_missing=False)
            done += len(rows)
            progress.advance(len(rows))
    return done


def _missing(index: IndexCore, targets: list[str], failed: dict[str, tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(key, stored path) of each row whose `targets` are empty, in key order, read a page at a time; rows that
    failed already are left out."""
    after = None
    while True:
        page = index.store.keys_missing(targets, after, index.settings.batch_size, extra=("path",))
        if not page:
            return
        after = page[-1][0]
        yield from ((key, row["path"]) for key, row in page if key not in failed)


def _build(index: IndexCore, columns: dict[str, str]) -> None:
    """Build the ANN indexes of the new fields once they are full (far faster than growing a graph row by row)."""
    missing = [vf for vf in index.spec.vector_fields
               if vf.name in columns.values() and vf.algorithm != "exact" and not index.store.ann_index_exists(vf)]
    for vf in missing:
        builds.build(index, vf.name)


def _switch(index: IndexCore, new: Embedder, columns: dict[str, str], failed: set[str]) -> None:
    targets = sorted(set(columns.values()))
    spec = index.spec
    previous = dict(spec.settings.get("previous_models", {}))
    for vf in spec.vector_fields:
        if vf.model_id and vf.name not in columns.values() and vf.name != CAPTION_FIELD and spec.model:
            previous.setdefault(vf.name, spec.model)
    try:
        index.redefine(vector_fields=spec.vector_fields, fields=spec.fields, model=new.name,
                       settings_changes={"reindex": None, "previous_models": previous or None},
                       require_filled=(targets, failed))
    except RowsStillEmpty:
        raise _StillToFill() from None


def _drop_old(index: IndexCore, new: Embedder) -> list[str]:
    """Drop the vector fields of earlier models and the photo fields only they filled (which each declares: no
    earlier model is loaded to learn them)."""
    spec = index.spec
    current = set(index.model().columns.values())
    old_vectors = [vf.name for vf in spec.vector_fields
                   if vf.model_id and vf.name not in current and vf.name != CAPTION_FIELD]
    new_fields = {f.name for f in new.photo_fields}
    old_fields: set[str] = set()
    for model_name in set(spec.settings.get("previous_models", {}).values()):
        try:
            old_fields |= {f.name for f in model_capabilities(model_name, index.settings.cache_dir).photo_fields}
        except (ModelNotAvailableError, ValueError):
            continue  # its fields stay: we cannot tell which they are
    old_fields -= new_fields
    dropped = tuple(sorted(set(old_vectors) | old_fields))
    if dropped:
        index.redefine(
            vector_fields=tuple(vf for vf in spec.vector_fields if vf.name not in dropped),
            fields=tuple(f for f in spec.fields if f.name not in dropped),
            model=spec.model, settings_changes={"previous_models": None}, drop=dropped,
        )
    return list(dropped)

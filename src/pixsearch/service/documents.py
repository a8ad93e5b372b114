"""Batches of document actions with Azure AI Search's semantics, for any front door.

upload          replaces the whole document (fields it omits become empty)
merge           sets the fields it gives on an existing document (NOT_FOUND when there is none), keeps the others
mergeOrUpload   merge when the document exists, else upload what it gives
delete          removes the document (a missing one is not an error)

Each document succeeds or fails on its own; the good ones are written in one transaction per action kind and set
of fields, so a batch never half-applies one document. Merges are single SQL statements (no read-modify-write).

On photo indexes, a photo's file and what was read or computed from it (path, hashes, sizes, format, the model's
fields and vectors) are written only by ingest and uploads: through here only PHOTO_EDITABLE_FIELDS may change, and
photos cannot be created (upload) — they come from files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from pixsearch.service.builds import loading
from pixsearch.service.core import IndexCore
from pixsearch.store.schema import PHOTO_EDITABLE_FIELDS

ACTIONS = ("upload", "merge", "mergeOrUpload", "delete")


@dataclass
class DocumentAction:
    """One document of a batch, its values already checked and converted for their fields by the front door."""

    action: str
    key: str
    fields: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, np.ndarray | None] = field(default_factory=dict)


class Outcome(Enum):
    """What became of one document of a batch (front doors map it to their own codes: the REST API to HTTP)."""

    WRITTEN = "written"  # stored (upload, merge, mergeOrUpload)
    DELETED = "deleted"  # gone; deleting a document that is not there is not an error either
    INVALID = "invalid"  # refused as given (its values, its action, a duplicate key): nothing of it stored
    NOT_FOUND = "not_found"  # a merge of a document that does not exist


@dataclass
class DocumentResult:
    key: str | None
    outcome: Outcome
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.WRITTEN, Outcome.DELETED)


def write_documents(index: IndexCore, actions: list[DocumentAction]) -> list[DocumentResult]:
    """Apply a batch; one result per action, in order."""
    spec = index.spec
    results: list[DocumentResult | None] = [None] * len(actions)
    photos = spec.kind == "photos"
    seen: set[str] = set()
    deletes: list[int] = []
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for i, item in enumerate(actions):
        if item.key in seen:
            results[i] = DocumentResult(item.key, Outcome.INVALID,
                                        f"key {item.key!r} appears more than once in the batch")
            continue
        seen.add(item.key)
        if item.action not in ACTIONS:
            results[i] = DocumentResult(item.key, Outcome.INVALID,
                                        f"unknown @search.action {item.action!r}; use one of {', '.join(ACTIONS)}")
            continue
        if item.action == "delete":
            deletes.append(i)
            continue
        refusal = _photo_refusal(item) if photos else None
        if refusal is not None:
            results[i] = DocumentResult(item.key, Outcome.INVALID, refusal)
            continue
        # A photo can only be merged: mergeOrUpload of a missing photo cannot create one.
        action = "merge" if photos else item.action
        columns = () if action == "upload" else tuple(sorted([*item.fields, *item.vectors]))
        groups.setdefault((action, columns), []).append(i)

    with loading(index, sum(len(m) for m in groups.values())):
        _apply_groups(index, actions, groups, results)
    if deletes:
        index.remove([actions[i].key for i in deletes])
        for i in deletes:
            results[i] = DocumentResult(actions[i].key, Outcome.DELETED)
    return [r for r in results if r is not None]


def _apply_groups(index: IndexCore, actions: list[DocumentAction], groups: dict[tuple[str, tuple[str, ...]], list[int]],
                  results: list[DocumentResult | None]) -> None:
    spec = index.spec
    for (action, columns), members in groups.items():
        rows = []
        for i in members:
            item = actions[i]
            row: dict[str, Any] = {spec.key_field: item.key, **item.fields}
            row.update(item.vectors)
            rows.append(row)
        try:
            if action == "upload":
                written = index.write_rows(rows)
            else:
                written = index.write_rows(rows, columns=list(columns), insert_missing=action == "mergeOrUpload")
        except ValueError as exc:
            for i in members:
                results[i] = DocumentResult(actions[i].key, Outcome.INVALID, str(exc))
            continue
        for i in members:
            key = actions[i].key
            if key in written:
                results[i] = DocumentResult(key, Outcome.WRITTEN)
            else:
                results[i] = DocumentResult(key, Outcome.NOT_FOUND,
                                            f"document {key!r} not found (merge needs an existing document)")


def _photo_refusal(item: DocumentAction) -> str | None:
    if item.action == "upload":
        return ("photos cannot be uploaded as documents: add image files with `pixsearch index` or POST "
                "/indexes/NAME/images; merge may change " + ", ".join(sorted(PHOTO_EDITABLE_FIELDS)))
    locked = sorted(set(item.fields) - PHOTO_EDITABLE_FIELDS) + sorted(item.vectors)
    if locked:
        return (f"field(s) {', '.join(locked)} of a photo are written only by ingest and uploads; merge may change "
                + ", ".join(sorted(PHOTO_EDITABLE_FIELDS)))
    return None

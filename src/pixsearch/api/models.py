"""Request bodies (pydantic, strict: no silent coercion) and the JSON <-> service conversions."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from pydantic import Field as PField

from pixsearch.limits import MAX_BATCH_DOCUMENTS, MAX_QUERY_IDS, MAX_QUERY_WEIGHT, MAX_VECTOR_QUERIES, MAX_WINDOW
from pixsearch.service import DocumentAction, DocumentResult, Outcome
from pixsearch.store import Field, IndexSpec, VectorField

_STRICT = ConfigDict(extra="forbid", strict=True)


# -- index definitions -----------------------------------------------------------------------------------------------
class FieldIn(BaseModel):
    model_config = _STRICT
    name: str
    type: str = "string"
    filterable: bool = False
    sortable: bool = False
    facetable: bool = False
    searchable: bool = False
    retrievable: bool = True
    # a ranked list of its own in keyword search (photo indexes' ocr_text: "ocr"), instead of the general one
    keywordList: str | None = PField(default=None, max_length=40)


class VectorFieldIn(BaseModel):
    model_config = _STRICT
    name: str
    dimensions: int
    metric: str = "cosine"
    storage: str = "vector"
    algorithm: str = "hnsw"
    parameters: dict[str, Any] = PField(default_factory=dict)
    modelId: str | None = None  # read-only: accepted so a GET definition can be PUT back unchanged
    space: str | None = PField(default=None, max_length=40)  # likewise: which of the model's spaces it holds


class IndexIn(BaseModel):
    model_config = _STRICT
    name: str | None = None
    kind: str = "documents"
    key: str = "id"
    fields: list[FieldIn] = PField(default_factory=list)
    vectorFields: list[VectorFieldIn]

    def to_service(self) -> tuple[str, tuple[Field, ...], tuple[VectorField, ...]]:
        fields = tuple(Field(**{k: v for k, v in f.model_dump().items() if k != "keywordList"},
                             keyword_list=f.keywordList) for f in self.fields)
        vector_fields = tuple(
            VectorField(name=v.name, dims=v.dimensions, model_id=v.modelId, metric=v.metric, storage=v.storage,
                        algorithm=v.algorithm, params=dict(v.parameters), space=v.space)
            for v in self.vectorFields
        )
        return self.key, fields, vector_fields


def field_json(f: Field) -> dict[str, Any]:
    out = {"name": f.name, "type": f.type, "filterable": f.filterable, "sortable": f.sortable,
           "facetable": f.facetable, "searchable": f.searchable, "retrievable": f.retrievable}
    if f.keyword_list is not None:
        out["keywordList"] = f.keyword_list
    return out


def vector_field_json(v: VectorField) -> dict[str, Any]:
    out = {"name": v.name, "dimensions": v.dims, "metric": v.metric, "storage": v.storage,
           "algorithm": v.algorithm, "parameters": dict(v.params), "modelId": v.model_id}
    if v.space is not None:
        out["space"] = v.space
    return out


def definition(spec: IndexSpec) -> dict[str, Any]:
    return {"name": spec.name, "kind": spec.kind, "key": spec.key_field,
            "fields": [field_json(f) for f in spec.fields],
            "vectorFields": [vector_field_json(v) for v in spec.vector_fields]}


# -- documents -------------------------------------------------------------------------------------------------------

class IndexBatch(BaseModel):
    model_config = _STRICT
    value: list[dict[str, Any]] = PField(max_length=MAX_BATCH_DOCUMENTS)


class DocumentError(ValueError):
    pass


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise DocumentError("expected an ISO 8601 datetime string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise DocumentError(f"{value!r} is not an ISO 8601 datetime") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _text(value: Any) -> bool:
    return isinstance(value, str) and "\x00" not in value


_SCALAR_CHECKS = {
    "string": (_text, "a string without NUL characters"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63, "an integer"),
    "float": (_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}
_ELEMENT_CHECKS = {
    "string[]": (_text, "strings without NUL characters"),
    "int[]": (lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31, "32-bit integers"),
    "float[]": (_number, "finite numbers"),
}


def field_value(f: Field, value: Any) -> Any:
    """A JSON value checked and converted for a metadata field; raises DocumentError."""
    if value is None:
        return None
    try:
        if f.type == "datetime":
            return _datetime(value)
        if f.type in _SCALAR_CHECKS:
            ok, what = _SCALAR_CHECKS[f.type]
            if not ok(value):
                raise DocumentError(f"expected {what}")
            return float(value) if f.type == "float" else value
        ok, what = _ELEMENT_CHECKS[f.type]
        if not isinstance(value, list) or not all(ok(v) for v in value):
            raise DocumentError(f"expected a list of {what}")
        return [float(v) for v in value] if f.type == "float[]" else list(value)
    except DocumentError as exc:
        raise DocumentError(f"field {f.name!r} ({f.type}): {exc}") from None


def vector_value(vf: VectorField, value: Any) -> np.ndarray:
    if not isinstance(value, list) or not all(_number(v) for v in value):
        raise DocumentError(f"vector field {vf.name!r}: expected a list of finite numbers")
    if len(value) != vf.dims:
        raise DocumentError(f"vector field {vf.name!r} needs {vf.dims} dimensions, got {len(value)}")
    return np.asarray(value, dtype=np.float32)


def document_actions(
    spec: IndexSpec, docs: list[dict[str, Any]]
) -> tuple[list[tuple[int, DocumentAction]], dict[int, DocumentResult]]:
    """An indexing batch's JSON documents -> service actions (their values checked and converted for their fields),
    by position; and the documents refused before reaching the service, by position."""
    fields = {f.name: f for f in spec.fields}
    vector_fields = {v.name: v for v in spec.vector_fields}
    actions: list[tuple[int, DocumentAction]] = []
    invalid: dict[int, DocumentResult] = {}
    for i, doc in enumerate(docs):
        key = doc.get(spec.key_field)
        if not isinstance(key, str) or not key or "\x00" in key:
            shown = key if isinstance(key, str) else None
            invalid[i] = DocumentResult(shown, Outcome.INVALID,
                                        f"the key field {spec.key_field!r} must be a non-empty string without NUL")
            continue
        action = doc.get("@search.action", "upload")
        item = DocumentAction(action=action if isinstance(action, str) else repr(action), key=key)
        try:
            for name, value in doc.items():
                if name in ("@search.action", spec.key_field):
                    continue
                if name in fields:
                    item.fields[name] = field_value(fields[name], value)
                elif name in vector_fields:
                    item.vectors[name] = None if value is None else vector_value(vector_fields[name], value)
                else:
                    raise DocumentError(f"unknown field {name!r} in index {spec.name!r}")
        except DocumentError as exc:
            invalid[i] = DocumentResult(key, Outcome.INVALID, str(exc))
            continue
        actions.append((i, item))
    return actions, invalid


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.ndarray):
        return [float(x) for x in value.reshape(-1)]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "to_numpy"):  # pgvector Vector / HalfVector
        return [float(x) for x in value.to_numpy()]
    return value


# -- search ----------------------------------------------------------------------------------------------------------
class VectorQueryIn(BaseModel):
    """One vector query. Kinds: `vector` (raw), `text` (embedded by the index's model), `image` / Azure's
    `imageBinary` (base64 image bytes in `image` or `base64Image`), `id` (a stored document's vector, or the mean of
    `ids`: "more like this/these"). Several queries are retrieved separately and fused by RRF, each with `weight`."""

    model_config = _STRICT
    kind: Literal["vector", "text", "image", "imageBinary", "id"]
    vector: list[float] | None = None
    text: str | None = None
    image: str | None = None
    base64Image: str | None = None
    id: str | None = None
    ids: list[str] | None = PField(default=None, max_length=MAX_QUERY_IDS)
    fields: str | None = None
    k: int | None = PField(default=None, ge=1, le=MAX_WINDOW)
    weight: float = PField(default=1.0, ge=0, le=MAX_QUERY_WEIGHT)
    exhaustive: bool = False


class SearchBody(BaseModel):
    model_config = _STRICT
    search: str | None = None
    vectorQueries: list[VectorQueryIn] = PField(default_factory=list, max_length=MAX_VECTOR_QUERIES)
    filter: str | None = None
    top: int | None = None
    skip: int = 0
    select: str | None = None
    facets: list[str] = PField(default_factory=list)
    orderby: str | None = None
    # which ranked hits count before orderby sorts them: "gap" (up to the largest score drop) or "relative:F"
    cutoff: str | None = PField(default=None, max_length=32)
    queryType: str | None = None
    mode: str | None = None
    count: bool = False
    debug: str | bool | None = None  # anything but false/"disabled": each result carries "@search.subscores"
    # "auto": text-query hits the index's model calls clearly irrelevant are left out (counted in
    # "@pixsearch.hidden"); "all": every ranked hit
    relevance: Literal["auto", "all"] = "auto"
    # "images": photos ranked by their best region (object patch), each with "@search.region" (box in pixels of the
    # original image); "regions": every matching region
    regions: Literal["images", "regions"] | None = None

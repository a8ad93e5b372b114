"""Azure AI Search index definitions <-> pixsearch's Field / VectorField.

Used when a request carries `api-version` or uses the OData path form (`/indexes('NAME')`), i.e. when the caller is
Microsoft's `azure-search-documents` client or speaks its REST API. Anything in a definition that pixsearch cannot
honour is refused with a 400/501 naming it, never silently dropped.
"""
from __future__ import annotations

from typing import Any

from pixsearch.api.errors import ApiError
from pixsearch.store import Field, IndexSpec, VectorField

ETAG = '"0x1"'  # definitions are immutable once created (PUT of a different one is a 409), so one constant etag

SCALAR_TYPES = {
    "Edm.String": "string",
    "Edm.Int32": "int",
    "Edm.Int64": "int",
    "Edm.Double": "float",
    "Edm.Boolean": "bool",
    "Edm.DateTimeOffset": "datetime",
    "Collection(Edm.String)": "string[]",
    "Collection(Edm.Int32)": "int[]",
    "Collection(Edm.Int64)": "int[]",
    "Collection(Edm.Double)": "float[]",
}
TYPES_OUT = {"string": "Edm.String", "int": "Edm.Int64", "float": "Edm.Double", "bool": "Edm.Boolean",
             "datetime": "Edm.DateTimeOffset", "string[]": "Collection(Edm.String)",
             "int[]": "Collection(Edm.Int32)", "float[]": "Collection(Edm.Double)"}
VECTOR_TYPE = "Collection(Edm.Single)"
METRICS_IN = {"cosine": "cosine", "euclidean": "l2", "dotProduct": "ip"}
METRICS_OUT = {v: k for k, v in METRICS_IN.items()}
ALGORITHMS_IN = {"hnsw": "hnsw", "exhaustiveKnn": "exact"}

# Top-level / field keys that are harmless when absent, null, empty or at their default.
_INDEX_IGNORED = {"name", "fields", "vectorSearch", "@odata.etag", "@odata.context", "description"}
_FIELD_KNOWN = {"name", "type", "key", "retrievable", "hidden", "stored", "searchable", "filterable", "sortable",
                "facetable", "dimensions", "vectorSearchProfile"}
# Real Azure AI Search features pixsearch lacks: 501 when used. Any other name is a mistake in the request: 400.
_AZURE_INDEX_FEATURES = {"scoringProfiles", "defaultScoringProfile", "corsOptions", "suggesters", "analyzers",
                         "tokenizers", "tokenFilters", "charFilters", "normalizers", "encryptionKey", "similarity",
                         "semantic", "permissionFilterOption", "purviewEnabled"}
_AZURE_FIELD_FEATURES = {"analyzer", "searchAnalyzer", "indexAnalyzer", "normalizer", "synonymMaps", "fields",
                         "vectorEncoding", "permissionFilter", "sensitivityLabel"}
_AZURE_VECTOR_SEARCH = {"profiles", "algorithms", "vectorizers", "compressions"}
_AZURE_ALGORITHM_KINDS = {"hnsw", "exhaustiveKnn"}
_AZURE_TYPES_LACKING = {f"{outer}({t})" if outer else t for outer in ("", "Collection")
                        for t in ("Edm.ComplexType", "Edm.GeographyPoint", "Edm.Half", "Edm.Int16", "Edm.SByte",
                                  "Edm.Byte", "Edm.Single", "Edm.Boolean", "Edm.DateTimeOffset")} - set(SCALAR_TYPES)


def _unsupported(what: str) -> ApiError:
    return ApiError(501, "NotImplemented", f"{what} is not supported by pixsearch")


def _unknown(what: str) -> ApiError:
    return ApiError(400, "InvalidRequest", f"unknown {what} in the index definition")


def _bad(message: str) -> ApiError:
    return ApiError(400, "InvalidRequest", message)


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {} or value is False


def _list_of(obj: dict[str, Any], name: str) -> list[Any]:
    value = obj.get(name) or []
    if not isinstance(value, list):
        raise _bad(f"vectorSearch.{name} must be a list")
    return value


def is_azure_definition(body: Any) -> bool:
    return isinstance(body, dict) and "vectorFields" not in body


def _vector_configs(vector_search: Any) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """profile name -> (algorithm, metric, params)."""
    if vector_search is None:
        return {}
    if not isinstance(vector_search, dict):
        raise _bad("vectorSearch must be an object")
    for extra in ("vectorizers", "compressions"):
        if not _empty(vector_search.get(extra)):
            raise _unsupported(f"vectorSearch.{extra}")
    unknown = set(vector_search) - _AZURE_VECTOR_SEARCH
    if unknown:
        raise _unknown(f"property vectorSearch.{min(unknown)}")
    algorithms: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for a in _list_of(vector_search, "algorithms"):
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            raise _bad("every vectorSearch algorithm needs a name")
        kind = a.get("kind")
        if kind not in _AZURE_ALGORITHM_KINDS:
            raise _bad(f"unknown vector search algorithm kind {kind!r}: use hnsw or exhaustiveKnn")
        params_name = "hnswParameters" if kind == "hnsw" else "exhaustiveKnnParameters"
        params = a.get(params_name) or {}
        if not isinstance(params, dict):
            raise _bad(f"algorithm {a['name']!r}: {params_name} must be an object")
        other = "exhaustiveKnnParameters" if kind == "hnsw" else "hnswParameters"
        if not _empty(a.get(other)):
            raise _bad(f"algorithm {a['name']!r} of kind {kind!r} cannot have {other}")
        metric_in = params.get("metric") or "cosine"
        if metric_in == "hamming":
            raise _unsupported("metric 'hamming' for Azure definitions (pixsearch's own definitions have it)")
        if metric_in not in METRICS_IN:
            raise _bad(f"unknown metric {metric_in!r}: use cosine, euclidean or dotProduct")
        ours: dict[str, Any] = {}
        for key, value in params.items():
            if key == "metric" or value is None:
                continue
            if kind == "hnsw" and key == "m":
                ours["m"] = value
            elif kind == "hnsw" and key == "efConstruction":
                ours["ef_construction"] = value
            elif kind == "hnsw" and key == "efSearch":
                raise _unsupported("hnswParameters.efSearch (pixsearch sizes the HNSW search per query)")
            else:
                raise _bad(f"unknown {params_name} property {key!r}")
        algorithms[a["name"]] = (ALGORITHMS_IN[kind], METRICS_IN[metric_in], ours)
    profiles = {}
    for p in _list_of(vector_search, "profiles"):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise _bad("every vectorSearch profile needs a name")
        for extra in ("vectorizer", "compression"):
            if not _empty(p.get(extra)):
                raise _unsupported(f"vector search profile {extra} ({p['name']!r})")
        algorithm = p.get("algorithm")
        if algorithm not in algorithms:
            raise _bad(f"vector search profile {p['name']!r} names unknown algorithm {algorithm!r}")
        profiles[p["name"]] = algorithms[algorithm]
    return profiles


def to_service(body: dict[str, Any]) -> tuple[str, tuple[Field, ...], tuple[VectorField, ...]]:
    """(key field, fields, vector fields) from an Azure index definition; raises ApiError."""
    for key, value in body.items():
        if key in _INDEX_IGNORED or _empty(value):
            continue
        if key in _AZURE_INDEX_FEATURES:
            raise _unsupported(f"index property {key!r}")
        raise _unknown(f"property {key!r}")
    profiles = _vector_configs(body.get("vectorSearch"))
    raw_fields = body.get("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise _bad("an index definition needs 'fields'")
    key_field = None
    fields: list[Field] = []
    vectors: list[VectorField] = []
    for f in raw_fields:
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("type"), str):
            raise _bad("every field needs a name and a type")
        name, type_ = f["name"], f["type"]
        for k, v in f.items():
            if k in _FIELD_KNOWN or _empty(v):
                continue
            if k in _AZURE_FIELD_FEATURES:
                raise _unsupported(f"field attribute {k!r} (field {name!r})")
            raise _unknown(f"field attribute {k!r} (field {name!r})")
        if f.get("stored") is False:
            raise _unsupported(f"stored: false (field {name!r})")
        retrievable = not f.get("hidden", False) and f.get("retrievable", True) is not False
        if f.get("key"):
            if key_field is not None:
                raise _bad(f"only one key field is allowed; got {key_field!r} and {name!r}")
            if type_ != "Edm.String":
                raise _bad(f"the key field {name!r} must be Edm.String")
            key_field = name
            continue
        if type_ == VECTOR_TYPE:
            dims, profile = f.get("dimensions"), f.get("vectorSearchProfile")
            if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
                raise _bad(f"vector field {name!r} needs 'dimensions'")
            if profile not in profiles:
                raise _bad(f"vector field {name!r} names unknown vectorSearchProfile {profile!r}")
            algorithm, metric, params = profiles[profile]
            vectors.append(VectorField(name=name, dims=dims, metric=metric, algorithm=algorithm, params=dict(params)))
            continue
        if type_ not in SCALAR_TYPES:
            if type_ in _AZURE_TYPES_LACKING:
                raise _unsupported(f"field type {type_!r} (field {name!r})")
            raise _bad(f"unknown field type {type_!r} (field {name!r})")
        if f.get("dimensions") is not None or f.get("vectorSearchProfile") is not None:
            raise _bad(f"field {name!r}: dimensions / vectorSearchProfile need type {VECTOR_TYPE}")
        fields.append(Field(name=name, type=SCALAR_TYPES[type_], filterable=bool(f.get("filterable")),
                            sortable=bool(f.get("sortable")), facetable=bool(f.get("facetable")),
                            searchable=bool(f.get("searchable")), retrievable=retrievable))
    if key_field is None:
        raise _bad("the index needs a key field (one Edm.String field with key: true)")
    if not vectors:
        raise _bad(f"the index needs at least one {VECTOR_TYPE} vector field")
    return key_field, tuple(fields), tuple(vectors)


def definition(spec: IndexSpec) -> dict[str, Any]:
    """An Azure-shaped definition of an index (one profile and one algorithm per vector field)."""
    fields: list[dict[str, Any]] = [{"name": spec.key_field, "type": "Edm.String", "key": True, "retrievable": True,
                                     "searchable": False, "filterable": True, "sortable": False,
                                     "facetable": False}]
    for f in spec.fields:
        fields.append({"name": f.name, "type": TYPES_OUT.get(f.type, f.type), "key": False,
                       "retrievable": f.retrievable, "searchable": f.searchable, "filterable": f.filterable,
                       "sortable": f.sortable, "facetable": f.facetable})
    profiles, algorithms = [], []
    for v in spec.vector_fields:
        profile, algorithm = f"{v.name}-profile", f"{v.name}-{v.algorithm}"
        fields.append({"name": v.name, "type": VECTOR_TYPE, "key": False, "retrievable": True, "searchable": True,
                       "filterable": False, "sortable": False, "facetable": False, "dimensions": v.dims,
                       "vectorSearchProfile": profile})
        profiles.append({"name": profile, "algorithm": algorithm})
        metric = METRICS_OUT.get(v.metric, v.metric)
        if v.algorithm == "hnsw":
            algorithms.append({"name": algorithm, "kind": "hnsw", "hnswParameters": {
                "m": v.params.get("m"), "efConstruction": v.params.get("ef_construction"), "metric": metric}})
        elif v.algorithm == "exact":
            algorithms.append({"name": algorithm, "kind": "exhaustiveKnn",
                               "exhaustiveKnnParameters": {"metric": metric}})
        else:  # ivfflat has no Azure counterpart: report it under our own kind name
            algorithms.append({"name": algorithm, "kind": v.algorithm, "parameters": dict(v.params),
                               "metric": metric})
    return {"@odata.etag": ETAG, "name": spec.name, "fields": fields, "scoringProfiles": [], "suggesters": [],
            "analyzers": [], "tokenizers": [], "tokenFilters": [], "charFilters": [],
            "vectorSearch": {"profiles": profiles, "algorithms": algorithms, "vectorizers": [], "compressions": []}}

"""What an index is: its key, metadata fields and vector fields, and which pgvector combinations are valid.

No SQL here; store/shape.py and the table parts (definition, queries, knn, writes, stats) turn a spec into SQL.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

INDEX_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")  # used with fullmatch: no trailing newline slips through
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")

# Field type -> (SQL type, binary COPY type name)
FIELD_TYPES: dict[str, tuple[str, str]] = {
    "string": ("text", "text"),
    "int": ("bigint", "int8"),
    "float": ("double precision", "float8"),
    "bool": ("boolean", "bool"),
    "datetime": ("timestamptz", "timestamptz"),
    "string[]": ("text[]", "text[]"),
    "int[]": ("integer[]", "int4[]"),
    "float[]": ("real[]", "float4[]"),
}

METRICS = ("cosine", "ip", "l2", "l1", "hamming", "jaccard")
STORAGES = ("vector", "halfvec", "bit")
ALGORITHMS = ("hnsw", "ivfflat", "exact")
# Distance operator per metric; the ORDER BY must use the operator of the index's operator class.
OPERATORS = {"cosine": "<=>", "ip": "<#>", "l2": "<->", "l1": "<+>", "hamming": "<~>", "jaccard": "<%>"}
# What each ANN method supports (pgvector 0.8): IVFFlat has no L1 and no Jaccard.
SUPPORTED = {
    "hnsw": {("vector", m) for m in ("cosine", "ip", "l2", "l1")}
    | {("halfvec", m) for m in ("cosine", "ip", "l2", "l1")}
    | {("bit", "hamming"), ("bit", "jaccard")},
    "ivfflat": {("vector", m) for m in ("cosine", "ip", "l2")}
    | {("halfvec", m) for m in ("cosine", "ip", "l2")}
    | {("bit", "hamming")},
}
SUPPORTED["exact"] = SUPPORTED["hnsw"]
# Largest dimension an index can hold, per storage (pgvector limits; bit is the quantised width).
MAX_INDEX_DIMS = {"vector": 2000, "halfvec": 4000, "bit": 64000}
MAX_DIMS = 16000
DEFAULT_PARAMS = {"hnsw": {"m": 16, "ef_construction": 64}, "ivfflat": {}, "exact": {}}
PARAM_RANGES = {"m": (2, 100), "ef_construction": (4, 1000), "lists": (1, 32768)}
# Binary quantisation keeps the float vector and re-ranks this many times k candidates by the exact metric.
DEFAULT_RERANK = {"rerank_metric": "cosine", "oversample": 4}
HALFVEC_OVERSAMPLE = 2


class SchemaError(ValueError):
    """An index definition pgvector cannot serve; the message says what would work."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str = "string"
    filterable: bool = False
    sortable: bool = False
    facetable: bool = False
    searchable: bool = False
    retrievable: bool = True
    # A ranked list of its own in keyword search (e.g. "ocr": text read from the pixels), fused with the others by
    # RRF instead of being one more field of the general keyword list.
    keyword_list: str | None = None

    def validate(self) -> None:
        if not isinstance(self.name, str) or not FIELD_NAME.fullmatch(self.name):
            raise SchemaError(f"invalid field name {self.name!r}: lowercase letters, digits and '_', start with a letter")
        if self.type not in FIELD_TYPES:
            raise SchemaError(f"field {self.name!r}: unknown type {self.type!r}; known: {', '.join(FIELD_TYPES)}")
        if self.sortable and self.type.endswith("[]"):
            raise SchemaError(f"field {self.name!r}: a collection ({self.type}) cannot be sortable")
        if self.keyword_list is not None and (self.type not in ("string", "string[]") or self.searchable):
            raise SchemaError(f"field {self.name!r}: a keyword list of its own needs a string field that is not also "
                              "searchable in the general list")

    @property
    def sql_type(self) -> str:
        return FIELD_TYPES[self.type][0]

    @property
    def copy_type(self) -> str:
        return FIELD_TYPES[self.type][1]


@dataclass(frozen=True)
class VectorField:
    """A vector column. model_id: the model that fills it (None: precomputed vectors). space: which of that model's
    vector spaces it holds, when the column's name differs from the space's (a re-index into a model of the same
    family adds `clip_2` next to `clip`)."""

    name: str
    dims: int
    model_id: str | None = None
    metric: str = "cosine"
    storage: str = "vector"
    algorithm: str = "hnsw"
    params: dict[str, Any] = field(default_factory=dict)
    space: str | None = None

    @property
    def space_name(self) -> str:
        return self.space or self.name

    def __post_init__(self) -> None:
        merged = dict(DEFAULT_PARAMS.get(self.algorithm, {}))
        if self.storage == "bit":
            merged.update(DEFAULT_RERANK)
        elif self.storage == "halfvec":
            # float16 rounding inside the index can swap near-ties: fetch 2k, re-rank by the exact distance.
            merged["oversample"] = HALFVEC_OVERSAMPLE
        merged.update(self.params or {})
        object.__setattr__(self, "params", merged)

    def validate(self) -> None:
        if not isinstance(self.name, str) or not FIELD_NAME.fullmatch(self.name):
            raise SchemaError(f"invalid vector field name {self.name!r}")
        if self.metric not in METRICS:
            raise SchemaError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        if self.storage not in STORAGES:
            raise SchemaError(f"unknown storage {self.storage!r}; known: {', '.join(STORAGES)}")
        if self.algorithm not in ALGORITHMS:
            raise SchemaError(f"unknown algorithm {self.algorithm!r}; known: {', '.join(ALGORITHMS)}")
        if not isinstance(self.dims, int) or not 1 <= self.dims <= MAX_DIMS:
            raise SchemaError(f"vector field {self.name!r}: dims must be 1..{MAX_DIMS}, got {self.dims!r}")
        if (self.storage, self.metric) not in SUPPORTED[self.algorithm]:
            valid = sorted(m for s, m in SUPPORTED[self.algorithm] if s == self.storage)
            hint = f"with {self.storage} storage {self.algorithm} supports: {', '.join(valid)}" if valid else ""
            if self.metric in ("hamming", "jaccard") and self.storage != "bit":
                hint = f"{self.metric} compares bits: use storage 'bit' (binary quantisation)"
            elif self.storage == "bit":
                hint = "bit storage (binary quantisation) is searched by hamming or jaccard distance"
            raise SchemaError(
                f"vector field {self.name!r}: {self.algorithm} cannot index {self.storage} with {self.metric}; {hint}"
            )
        if self.algorithm != "exact" and self.dims > MAX_INDEX_DIMS[self.storage]:
            raise SchemaError(
                f"vector field {self.name!r}: {self.algorithm} indexes {self.storage} up to "
                f"{MAX_INDEX_DIMS[self.storage]} dimensions, this one has {self.dims}; use storage 'halfvec' or 'bit', "
                "or algorithm 'exact'"
            )
        allowed = set(DEFAULT_PARAMS[self.algorithm]) | ({"lists"} if self.algorithm == "ivfflat" else set())
        if self.storage == "bit":
            allowed |= set(DEFAULT_RERANK)
        elif self.storage == "halfvec":
            allowed.add("oversample")
        for key, value in self.params.items():
            if key not in allowed:
                raise SchemaError(
                    f"vector field {self.name!r}: unknown parameter {key!r} for {self.algorithm}"
                    f"{' with bit storage' if self.storage == 'bit' else ''}; known: {', '.join(sorted(allowed)) or 'none'}"
                )
            if key in PARAM_RANGES:
                lo, hi = PARAM_RANGES[key]
                if not isinstance(value, int) or not lo <= value <= hi:
                    raise SchemaError(f"vector field {self.name!r}: {key} must be an integer in {lo}..{hi}")
            elif key == "rerank_metric":
                if value not in ("cosine", "ip", "l2", "l1"):
                    raise SchemaError("rerank_metric must be one of cosine, ip, l2, l1")
            elif key == "oversample":
                if not isinstance(value, int) or not 1 <= value <= 100:
                    raise SchemaError("oversample must be an integer in 1..100")
        if self.algorithm == "hnsw" and self.params["ef_construction"] < 2 * self.params["m"]:
            raise SchemaError("ef_construction must be at least 2 * m")

    # The column always holds what is searched exactly: float32 for vector and bit (the bits are an index on it).
    @property
    def column_type(self) -> str:
        return "halfvec" if self.storage == "halfvec" else "vector"

    @property
    def operator(self) -> str:
        return OPERATORS[self.metric]

    @property
    def opclass(self) -> str:
        return f"{'bit' if self.storage == 'bit' else self.column_type}_{self.metric}_ops"

    @property
    def exact_metric(self) -> str:
        """The metric results are finally ranked by (bit fields re-rank their candidates on the float vector)."""
        return self.params["rerank_metric"] if self.storage == "bit" else self.metric

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IndexSpec:
    name: str
    table_name: str
    vector_fields: tuple[VectorField, ...]
    fields: tuple[Field, ...] = ()
    key_field: str = "id"
    kind: str = "documents"
    settings: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # registry name of the model that fills its modelled vector fields

    @property
    def field_count(self) -> int:
        """Every field a request can name: the key, the document fields and the vector fields."""
        return 1 + len(self.fields) + len(self.vector_fields)

    def vector_field(self, name: str | None = None) -> VectorField:
        if name is None:
            if len(self.vector_fields) == 1:
                return self.vector_fields[0]
            raise SchemaError(
                f"index {self.name!r} has several vector fields ({', '.join(v.name for v in self.vector_fields)}): "
                "name one"
            )
        for vf in self.vector_fields:
            if vf.name == name:
                return vf
        raise SchemaError(
            f"index {self.name!r} has no vector field {name!r}; it has: {', '.join(v.name for v in self.vector_fields)}"
        )

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        if name == self.key_field:
            return Field(self.key_field, "string", filterable=True, sortable=True)
        raise SchemaError(f"index {self.name!r} has no field {name!r}")

    def tuned(self, field_name: str) -> dict[str, Any]:
        return dict(self.settings.get("tuned", {}).get(field_name, {}))

    def validate(self) -> None:
        if not isinstance(self.name, str) or not INDEX_NAME.fullmatch(self.name):
            raise SchemaError(
                f"invalid index name {self.name!r}: 1-40 lowercase letters, digits, '-' or '_', starting with a "
                "letter or digit"
            )
        if not isinstance(self.key_field, str) or not FIELD_NAME.fullmatch(self.key_field):
            raise SchemaError(
                f"invalid key field name {self.key_field!r}: lowercase letters, digits and '_', start with a letter"
            )
        if not self.vector_fields:
            raise SchemaError("an index needs at least one vector field")
        names = [self.key_field, "indexed_at", "search_text"] + [f.name for f in self.fields] + [v.name for v in self.vector_fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SchemaError(f"field names used twice: {', '.join(duplicates)}")
        for f in self.fields:
            f.validate()
        for vf in self.vector_fields:
            vf.validate()


def table_name_for(index_name: str) -> str:
    return "px_" + index_name.replace("-", "_")


def default_lists(rows: int) -> int:
    """pgvector's advice: rows / 1000 up to 1M rows, sqrt(rows) beyond; at least 10 here."""
    lists = rows // 1000 if rows <= 1_000_000 else int(math.sqrt(rows))
    return max(10, min(lists, PARAM_RANGES["lists"][1]))


def default_probes(lists: int) -> int:
    return max(1, int(round(math.sqrt(lists))))


# What a listing without a query shows first, per index kind ("recent photos"); such tables carry a b-tree index in
# exactly this order (then indexed_at DESC, key), so a page of the listing reads a few index entries, not a sort.
BROWSE_ORDER: dict[str, tuple[tuple[str, bool], ...]] = {"photos": (("taken_at", True),)}
# Columns looked up by value, per index kind, with a b-tree each: a photo's content hash finds the row of a file that
# was moved or renamed (its vectors move with it instead of being computed again).
LOOKUP_COLUMNS: dict[str, tuple[str, ...]] = {"photos": ("content_hash",)}

# The photo index: what ingest fills for every photo whatever the model (the model adds its own fields, e.g. the
# offline model's classes and tags). Internal bookkeeping fields are not retrievable.
PHOTO_FIELDS: tuple[Field, ...] = (
    Field("path", "string", filterable=True, sortable=True),
    Field("folder", "string", filterable=True, facetable=True, searchable=True),
    Field("filename", "string", searchable=True, sortable=True),
    Field("content_hash", "string", retrievable=False),
    Field("size_bytes", "int", filterable=True, sortable=True),
    Field("mtime_ns", "int", retrievable=False),
    Field("format", "string", filterable=True, facetable=True),
    Field("width", "int", filterable=True, sortable=True),
    Field("height", "int", filterable=True, sortable=True),
    Field("taken_at", "datetime", filterable=True, sortable=True, facetable=True),
    Field("taken_at_source", "string", filterable=True, facetable=True),  # exif, exif-no-offset, xmp, iptc, file
    Field("camera", "string", filterable=True, facetable=True),
    Field("camera_make", "string", filterable=True, facetable=True),
    Field("camera_model", "string", filterable=True, facetable=True),
    Field("lens", "string", filterable=True, facetable=True),
    Field("gps_lat", "float", filterable=True),
    Field("gps_lon", "float", filterable=True),
    # what people wrote about the photo (XMP, IPTC, EXIF, .xmp/.txt sidecars): ingest/descriptions.py
    Field("title", "string", searchable=True),
    Field("description", "string", searchable=True),
    Field("keywords", "string[]", filterable=True, facetable=True, searchable=True),
    # a caption a vision LLM wrote (`--captioner openai:MODEL`): kept apart from what people wrote, searchable the
    # same way (keywords like keywords), and part of the caption vector (service/captioning.py)
    Field("generated_title", "string", searchable=True),
    Field("generated_description", "string", searchable=True),
    Field("generated_keywords", "string[]", filterable=True, facetable=True, searchable=True),
    Field("generated_by", "string", filterable=True, facetable=True),  # the captioner, e.g. openai:gpt-4o-mini
    # "SETTINGS:CONTENT_HASH": the captioner settings (model, prompt, server) and the bytes the caption is of; a
    # photo whose value is another is captioned again (from the cache when those bytes were captioned before)
    Field("generated_from", "string", retrievable=False),
    # text read from the pixels (`--ocr`): a ranked list of its own; its lines' boxes as JSON, for the page
    Field("ocr_text", "string", keyword_list="ocr"),
    Field("ocr_boxes", "string"),
    # `--faces` (store/faces.py): who is in the photo (people's names, and ids for unnamed people), and how many
    # faces were found in it (NULL: not scanned yet; ingest rewriting a changed photo's row clears both)
    Field("people", "string[]", filterable=True, facetable=True),
    Field("face_count", "int", filterable=True, sortable=True),
    # the files of one shot (Live Photo, RAW+JPEG, burst, edited copy): ingest/formats.py companion_key
    Field("companion_key", "string", filterable=True),
    Field("sidecar_state", "string", retrievable=False),  # the sidecars' names, sizes and times when last read
    Field("layout", "string", retrievable=False),  # a tiny greyscale frame: edited copies vs bursts (ingest/layout.py)
)
CAPTION_FIELD = "caption"  # the caption (title, description, keywords) embedded in the model's text space
# What the REST API may change on a photo (merge): descriptive metadata. Everything else of a photo (its file, the
# facts read from the file, the model's fields and vectors) is written only by ingest and uploads: a client that
# could set `path` could make the server read any file.
PHOTO_EDITABLE_FIELDS = frozenset({"taken_at", "camera", "gps_lat", "gps_lon"})

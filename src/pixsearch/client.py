"""The Python API: `pixsearch.connect()` and the indexes it opens.

    import pixsearch

    with pixsearch.connect() as client:                      # embedded database, or PIXSEARCH_DATABASE_URL
        photos = client.create_index("photos", model="offline")
        photos.add_images(["/home/me/Pictures"])
        for hit in photos.search("a red mushroom on moss", k=5):
            print(hit.score, hit.fields["path"])

Shaped after FiftyOne Brain's similarity indexes (build from a model or from precomputed embeddings, query by text,
image, sample id, ids or vector, add/remove/get embeddings, `sort_by_similarity`), over the same service every other
front door uses. A client and its indexes are safe to share between threads.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from pixsearch.config import Settings
from pixsearch.limits import MAX_TOP
from pixsearch.search.odata import parse_filter
from pixsearch.search.request import SearchRequest, query_terms
from pixsearch.service import Engine, Index
from pixsearch.service.duplicates import duplicate_groups
from pixsearch.sources import is_object_url
from pixsearch.store import Field, IndexSpec, QueryOptions, VectorField
from pixsearch.store.filters import And, Filter, In

EMBEDDING_FIELD = "embedding"


@dataclass
class SearchHit:
    """One result: the id, a similarity score (higher is more similar), the raw distance of the metric, the stored
    fields, and for region searches the region (`box` as (x0, y0, x1, y1) in pixels of the original image)."""

    id: str
    score: float
    distance: float | None
    fields: dict[str, Any] = field(default_factory=dict)
    region: dict[str, Any] | None = None

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        return tuple(self.region["box"]) if self.region else None


class SearchHits(list):
    """The hits of one search, best first; `to_pandas()` when pandas is installed."""

    def ids(self) -> list[str]:
        return [hit.id for hit in self]

    def to_pandas(self):
        import pandas as pd  # optional: only this method needs it

        return pd.DataFrame([{"id": h.id, "score": h.score, "distance": h.distance, **h.fields,
                              **({"box": h.box} if h.region else {})} for h in self])


class SimilarityIndex:
    """One index: add and remove images or embeddings, get embeddings back, search, find duplicates."""

    def __init__(self, client: "Client", name: str):
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"SimilarityIndex({self.name!r})"

    @property
    def _index(self) -> Index:
        return self.client.engine.index(self.name)  # a fresh definition each time: another process may change it

    @property
    def spec(self) -> IndexSpec:
        return self._index.spec

    @property
    def total_size(self) -> int:
        """How many items (images or embeddings) the index holds."""
        return self._index.count()

    def __len__(self) -> int:
        return self.total_size

    def __contains__(self, item_id: str) -> bool:
        return bool(self._index.get([item_id], vectors=False))

    # -- writes ----------------------------------------------------------------------------------------------------
    def add_images(self, images: Iterable[str | Path | Image.Image | bytes], *, regions: str | Path | None = None,
                   follow_symlinks: bool = False, captioner: str | bool | None = None,
                   caption_prompt: str | None = None, ray: str | None = None) -> list[str]:
        """Embed and add images: file or folder paths (folders walked recursively; the files stay where they are),
        object store locations ("az://container/prefix", "s3://bucket/prefix"; credentials from the environment),
        PIL images or encoded bytes (kept under PIXSEARCH_HOME/uploads/<index>/). Returns the ids of the images
        given (for folders, of every image found). regions: also index regions ("grid", or a box file).
        captioner: "openai:MODEL" adds generated captions (the photos are sent to that OpenAI-compatible service;
        remembered for the index, with caption_prompt), False stops it, None: as the index is set up. ray: embed the
        files on this Ray cluster (host:port of its head, "auto" for RAY_ADDRESS; see `pixsearch index --ray`)."""
        index = self._index
        index.set_captioner(captioner, caption_prompt)
        paths, ids = [], []
        for item in images:
            if isinstance(item, str) and is_object_url(item):
                paths.append(item)  # az://container/prefix, s3://bucket/prefix (a Path would drop a slash)
            elif isinstance(item, (str, Path)):
                paths.append(Path(item))
            else:
                data = item if isinstance(item, (bytes, bytearray)) else _encoded(item)
                key, _ = index.add_image_bytes("image", bytes(data))
                ids.append(key)
        if paths:
            report = index.add_paths(paths, prune=False, follow_symlinks=follow_symlinks, ray=ray)
            ids += report.keys
        if regions is not None:
            index.add_regions(str(regions) if isinstance(regions, Path) else regions, photo_keys=ids)
        return ids

    def add_embeddings(self, embeddings: np.ndarray, ids: Sequence[str],
                       metadata: Sequence[Mapping[str, Any]] | None = None) -> int:
        """Upsert precomputed embeddings (n, dims) with their ids and optional per-item fields."""
        index = self._index
        return index.add_vectors([str(i) for i in ids], np.asarray(embeddings, dtype=np.float32), metadata)

    def remove(self, ids: Sequence[str]) -> int:
        return self._index.remove([str(i) for i in ids])

    def get_embeddings(self, ids: Sequence[str] | None = None, *, field: str | None = None
                       ) -> tuple[np.ndarray, list[str]]:
        """(embeddings (n, dims) float32, their ids): of the given ids (in that order; unknown ids are left out),
        or of the whole index."""
        index = self._index
        vf = index.spec.vector_field(field or _default_field(index))
        if ids is None:
            return index.all_vectors(vf.name)
        found = index.get([str(i) for i in ids], vectors=True)
        keys = [str(i) for i in ids if str(i) in found and found[str(i)].get(vf.name) is not None]
        array = np.stack([found[k][vf.name] for k in keys]) if keys else np.zeros((0, vf.dims), np.float32)
        return array, keys

    def cleanup(self) -> None:
        """Delete the index (its table, regions and registry entry)."""
        self.client.engine.delete_index(self.name)

    # -- search ----------------------------------------------------------------------------------------------------
    def search(self, query: Any, k: int = 10, *, filter: str | Filter | None = None,
               within_ids: Sequence[str] | None = None, aggregation: str = "mean", regions: bool | str = False,
               field: str | None = None, mode: str | None = None, hide_irrelevant: bool = False,
               ef_search: int | None = None, exact: bool = False) -> SearchHits:
        """The k items most similar to `query`: a text prompt, an image (a path to an image file, a PIL image or
        encoded bytes), a stored id, a list of stored ids (aggregation "mean": their mean vector; "max": each
        searched and the best score kept), or a vector. filter: an OData filter (`"width ge 1000"`) or a filter
        tree; within_ids: only these ids. regions=True (or "regions"): every matching region; "images": each photo
        by its best region, with the box."""
        index = self._index
        request = SearchRequest(top=k, field=field, mode=mode, hide_irrelevant=hide_irrelevant,
                                options=QueryOptions(ef_search=ef_search, exact=exact),
                                regions={True: "regions", False: None}.get(regions, regions),
                                filter=_within(filter, within_ids, index.spec.key_field))
        if aggregation not in ("mean", "max"):
            raise ValueError(f"aggregation must be 'mean' or 'max', got {aggregation!r}")
        _ask(index, request, query)
        if request.ids and aggregation == "max" and len(request.ids) > 1:
            return self._best_of(list(request.ids), request)
        return _hits(index.query(request))

    def _best_of(self, ids: list[str], request: SearchRequest) -> SearchHits:
        best: dict[str, SearchHit] = {}
        for key in ids:
            request.ids = [key]
            for hit in _hits(self._index.query(request)):
                if hit.id not in best or hit.score > best[hit.id].score:
                    best[hit.id] = hit
        return SearchHits(sorted(best.values(), key=lambda h: (-h.score, h.id))[: request.top])

    def sort_by_similarity(self, query: Any, k: int | None = None, reverse: bool = False,
                           dist_field: str | None = None, **search_options: Any) -> SearchHits:
        """FiftyOne's name and arguments for search: k=None means as many as a search returns (1,000); reverse=True
        the least similar first (cosine and inner-product fields: the nearest to the opposite of the query);
        dist_field: also put each hit's distance in its fields under that name."""
        k = k or MAX_TOP
        if reverse:
            index = self._index
            vf = index.spec.vector_field(search_options.get("field") or _default_field(index))
            if vf.exact_metric not in ("cosine", "ip"):
                raise ValueError("reverse=True needs a cosine or inner-product field")
            request = SearchRequest(field=vf.name)
            _ask(index, request, query)
            field_name, vector = index.resolve(query_terms(request), vf.name)
            options = {name: value for name, value in search_options.items() if name != "field"}
            hits = self.search(-vector, k, field=field_name, **options)
        else:
            hits = self.search(query, k, **search_options)
        if dist_field:
            for hit in hits:
                hit.fields[dist_field] = hit.distance
        return hits

    def duplicates(self, threshold: float | None = None, *, field: str | None = None,
                   same_frame: bool = True) -> list[list[str]]:
        """Groups of near-identical items: pairs within `threshold` cosine distance on `field` (default: the image
        field; threshold default: calibrated for the model), found through the ANN index (each item's nearest
        neighbours) and, for photos, with the same layout (same_frame=False also groups similar shots such as a
        burst's), joined transitively."""
        index = self._index
        return [group.ids for group in duplicate_groups(index, threshold, field=field, same_frame=same_frame)]


class Client:
    """A connection to one pixsearch database (see connect()). Use as a context manager, or call close()."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    def create_index(
        self, name: str, *, model: str | None = None, embeddings: np.ndarray | None = None,
        ids: Sequence[str] | None = None, metadata: Sequence[Mapping[str, Any]] | None = None,
        metric: str = "cosine", algorithm: str = "hnsw", m: int = 16, ef_construction: int = 64,
        storage: str = "vector", fields: Sequence[Field | Mapping[str, Any]] | None = None,
        distributed: bool | None = None,
    ) -> SimilarityIndex:
        """A new index. With `embeddings` ((n, dims) array, and `ids`, default "0".."n-1"; `metadata`, per item
        fields whose types are inferred unless `fields` gives them): an index of precomputed vectors. Otherwise a
        photo index embedded by `model` ("offline", "clip:PATH_OR_REPO", "open_clip:ARCH[:CHECKPOINT]"; default:
        the configured one); add images to it with add_images()."""
        params = {"m": m, "ef_construction": ef_construction} if algorithm == "hnsw" else {}
        if embeddings is None:
            self.engine.create_photo_index(name, model=model, distributed=distributed, algorithm=algorithm,
                                           storage=storage, params=params)
            return SimilarityIndex(self, name)
        array = np.asarray(embeddings, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"embeddings must be a 2-d array (n, dims), got shape {array.shape}")
        ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(array))]
        declared = [f if isinstance(f, Field) else Field(**f) for f in fields] if fields else _infer_fields(metadata)
        vf = VectorField(EMBEDDING_FIELD, array.shape[1], metric=metric, storage=storage, algorithm=algorithm,
                         params=params)
        self.engine.create_index(name, [vf], declared, distributed=distributed)
        handle = SimilarityIndex(self, name)
        if len(array):
            handle.add_embeddings(array, ids, metadata)
        return handle

    def index(self, name: str) -> SimilarityIndex:
        """An existing index by name (IndexNotFoundError if there is none)."""
        self.engine.index(name)
        return SimilarityIndex(self, name)

    def list_indexes(self) -> list[str]:
        return [spec.name for spec in self.engine.list_indexes()]

    def rename_index(self, name: str, new_name: str) -> SimilarityIndex:
        self.engine.rename_index(name, new_name)
        return SimilarityIndex(self, new_name)

    def delete_index(self, name: str) -> None:
        self.engine.delete_index(name)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(database_url: str | None = None, home: str | Path | None = None, **settings: Any) -> Client:
    """A client. Settings come, in this order of precedence, from these keyword arguments, the PIXSEARCH_*
    environment, $PIXSEARCH_HOME/config.toml and the defaults (the embedded database under PIXSEARCH_HOME)."""
    return Client(Engine(Settings.load(database_url=database_url, home=home, **settings)))


def from_fiftyone(client: Client, name: str, sample_ids: Sequence[str], embeddings: np.ndarray,
                  **create_options: Any) -> SimilarityIndex:
    """An index from what FiftyOne gives: `embeddings = dataset.compute_embeddings(model)` and
    `sample_ids = dataset.values("id")` (same order). Query it by sample id, ids, vector or, for a modelled index,
    text — with FiftyOne's argument names through sort_by_similarity()."""
    return client.create_index(name, embeddings=embeddings, ids=[str(i) for i in sample_ids], **create_options)


# -- helpers -------------------------------------------------------------------------------------------------------------
def _encoded(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _default_field(index: Index) -> str:
    if index.modelled:
        return index.model().image_field
    return index.spec.vector_field(None).name


def _ask(index: Index, request: SearchRequest, query: Any) -> None:
    """Put `query` into the request as what it is: stored id(s), an image, a text prompt or a vector."""
    ids = _as_ids(index, query)
    if ids is not None:
        request.ids = ids
    elif isinstance(query, (Image.Image, bytes, bytearray)) or (isinstance(query, (str, Path))
                                                                and _is_image_file(query)):
        request.image = Path(query) if isinstance(query, str) else query
    elif isinstance(query, str):
        request.text = query
    else:
        request.vector = np.asarray(query, dtype=np.float32)


def _is_image_file(query: str | Path) -> bool:
    try:
        return Path(query).is_file()
    except (OSError, ValueError):
        return False


def _as_ids(index: Index, query: Any) -> list[str] | None:
    """The stored ids a query names: one id (a string that is a stored id) or a list of them; else None."""
    if isinstance(query, str) and not _is_image_file(query) and index.get([query], vectors=False):
        return [query]
    if isinstance(query, (list, tuple)) and query and all(isinstance(v, str) for v in query):
        return list(query)
    return None


def _within(filter: str | Filter | None, ids: Sequence[str] | None, key_field: str) -> str | Filter | None:
    if ids is None:
        return filter
    restriction = In(key_field, tuple(str(i) for i in ids))
    if filter is None:
        return restriction
    if isinstance(filter, str):
        filter = parse_filter(filter)
    return And((filter, restriction))


def _hits(response) -> SearchHits:
    return SearchHits(SearchHit(h.id, h.score, None if h.distance != h.distance else h.distance, dict(h.document),
                                h.region) for h in response)


def _field_type(value: Any) -> str | None:
    for kinds, name in ((bool, "bool"), ((int, np.integer), "int"), ((float, np.floating), "float"),
                        (datetime, "datetime"), (str, "string")):
        if isinstance(value, kinds):  # bool before int: a bool is an int too
            return name
    return None


def _infer_fields(metadata: Sequence[Mapping[str, Any]] | None) -> list[Field]:
    """Field types from the values: scalars filterable (and strings facetable), lists as collections."""
    if not metadata:
        return []
    types: dict[str, str] = {}
    for doc in metadata:
        for name, value in doc.items():
            if value is None or name in types:
                continue
            if isinstance(value, (list, tuple)):
                inner = next((_field_type(v) for v in value if v is not None), "string")
                types[name] = f"{inner}[]" if inner in ("string", "int", "float") else "string[]"
            else:
                types[name] = _field_type(value) or "string"
    return [Field(name, kind, filterable=True, facetable=kind in ("string", "string[]", "int"),
                  sortable=not kind.endswith("[]"), searchable=kind in ("string", "string[]"))
            for name, kind in types.items()]

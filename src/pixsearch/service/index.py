"""Index: what one index can do, for every front door (CLI, Python, REST, web)."""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from pixsearch.ingest import IngestProgress, IngestReport
from pixsearch.limits import MAX_DUPLICATE_GROUPS, MAX_TOP
from pixsearch.search import evaluation
from pixsearch.search.context import SearchContext
from pixsearch.search.expressions import Term
from pixsearch.search.embedding import combine_embedded, embed_terms
from pixsearch.search.execute import run as run_request
from pixsearch.search.request import SearchRequest, SearchResponse, query_terms
from pixsearch.service import builds, captioning, documents, faces, library, photos, regions, reindex
from pixsearch.service.core import IndexCore, ModelMismatchError
from pixsearch.service.duplicates import DuplicateGroup, duplicate_groups
from pixsearch.service.regions import RegionReport
from pixsearch.service.reindex import ReindexReport
from pixsearch.service.roots import photo_urls
from pixsearch.store import Filter, QueryOptions, SchemaError, SearchResult
from pixsearch.store.tables import iter_chunks

log = logging.getLogger(__name__)

IMAGE_QUERY_PREFIX = "image:"
VECTOR_BATCH = 5000
__all__ = ["Index", "ModelMismatchError", "Query"]


@dataclass(frozen=True)
class Query:
    """One search request: text or an image (a path or a PIL image), never both empty."""

    text: str | None = None
    image: str | Path | Image.Image | None = None

    @classmethod
    def parse_line(cls, line: str) -> "Query":
        """A batch-file line: plain text, or `image:PATH`."""
        line = line.strip()
        if line.startswith(IMAGE_QUERY_PREFIX):
            return cls(image=line[len(IMAGE_QUERY_PREFIX) :].strip())
        return cls(text=line)

    def describe(self) -> str:
        if self.image is not None:
            return f"{IMAGE_QUERY_PREFIX}{self.image if not isinstance(self.image, Image.Image) else '<image>'}"
        return self.text or ""


class Index(IndexCore):
    """One named index, for every front door: writes, reads, searches, ANN builds and tuning. Opened by
    Engine.index(). It adds nothing of its own to the core (service/core.py): each method hands over to the feature
    module that does the work."""

    def search_context(self, *, allow_file_terms: bool = True) -> SearchContext:
        """What search needs of this index. allow_file_terms=False for requests from the network."""
        return SearchContext(
            store=self.store,
            model=self.model if self.modelled else None,
            query_vectors=self.engine.query_vectors,
            open_image=self.engine.open_image,
            allow_file_terms=allow_file_terms,
        )

    # -- writes ----------------------------------------------------------------------------------------------------
    def add_paths(self, paths: Sequence[str | Path], *, prune: bool = True, follow_symlinks: bool = False,
                  progress: IngestProgress | None = None, roots: Sequence[Path] | None = None,
                  ocr: bool | None = None, captioner: str | bool | None = None, caption_prompt: str | None = None,
                  photo_url: Callable[[str], str | None] | None = None, ray: str | None = None,
                  faces: bool | None = None) -> IngestReport:
        """Index photo files and folders (service/library.py); `captioner="openai:MODEL"` adds generated captions
        (remembered; False stops it); faces=True also finds faces and groups them into people (remembered for later
        runs, like ocr)."""
        return library.add_paths(self, paths, prune=prune, follow_symlinks=follow_symlinks, progress=progress,
                                 roots=roots, ocr=ocr, captioner=captioner, caption_prompt=caption_prompt,
                                 photo_url=photo_url, ray=ray, faces=faces)

    def set_captioner(self, captioner: str | bool | None, prompt: str | None = None) -> None:
        """Switch generated captions on (`openai:MODEL`, with an optional prompt) or off (False) for the index's
        later runs (service/captioning.py configure)."""
        captioning.configure(self, captioner, prompt)

    def caption(self, *, progress: IngestProgress | None = None,
                photo_url: Callable[[str], str | None] | None = None) -> "captioning.CaptionRun | None":
        """Generated captions for the photos lacking one, with the index's captioner (None: it has none)."""
        captioner = captioning.index_captioner(self)
        if captioner is None:
            return None
        try:
            return captioning.caption_photos(self, captioner, progress=progress,
                                             photo_url=photo_urls(self, photo_url))
        finally:
            captioner.client.close()

    def duplicates(self, threshold: float | None = None, *, same_frame: bool = True,
                   max_groups: int = MAX_DUPLICATE_GROUPS) -> list[DuplicateGroup]:
        """Groups of near-duplicates with their documents (service/duplicates.py)."""
        return duplicate_groups(self, threshold, same_frame=same_frame, with_documents=True, max_groups=max_groups)

    def apply_folder_changes(self, changed: set[str], deleted: set[str], moved: list[tuple[str, str]], *,
                             roots: Sequence[Path], follow_symlinks: bool = False) -> IngestReport:
        """One batch of a folder watcher's changes (service/photos.py apply_folder_changes)."""
        return photos.apply_folder_changes(self, changed, deleted, moved, roots=roots, follow_symlinks=follow_symlinks)

    def add_vectors(
        self,
        ids: Sequence[str],
        vectors: np.ndarray | Mapping[str, np.ndarray],
        documents: Sequence[Mapping[str, Any]] | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Upsert precomputed vectors (an array for the index's one vector field, or field -> array) with optional
        metadata per id, in batches of VECTOR_BATCH rows, each batch one transaction."""
        if not isinstance(vectors, Mapping):
            vectors = {self.spec.vector_field(None).name: vectors}
        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        for name, array in vectors.items():
            vf = self.spec.vector_field(name)
            array = np.asarray(array)
            if array.ndim != 2 or array.shape != (len(ids), vf.dims):
                raise ValueError(
                    f"vector field {name!r} needs an array of shape ({len(ids)}, {vf.dims}), got {array.shape}"
                )
        if documents is not None and len(documents) != len(ids):
            raise ValueError(f"got {len(documents)} documents for {len(ids)} ids")
        known = {f.name for f in self.spec.fields}
        for doc in documents or ():
            unknown = set(doc) - known
            if unknown:
                raise SchemaError(f"unknown field(s) {', '.join(sorted(unknown))} in index {self.name!r}")
        written = 0
        with builds.loading(self, len(ids)):
            for chunk in iter_chunks(range(len(ids)), VECTOR_BATCH):
                rows = []
                for i in chunk:
                    row = dict(documents[i]) if documents is not None else {}
                    row[self.spec.key_field] = ids[i]
                    for name, array in vectors.items():
                        row[name] = array[i]
                    rows.append(row)
                self.write_rows(rows)
                written += len(rows)
                if progress:
                    progress(len(rows))
            self.store.analyze()
        return written

    def reindex(self, model: str, *, drop_old: bool = False, progress: IngestProgress | None = None) -> "ReindexReport":
        """Move the index to another model without downtime (service/reindex.py); resumes an interrupted one."""
        return reindex.reindex(self, model, drop_old=drop_old, progress=progress)

    def abort_reindex(self) -> list[str]:
        """Undo a re-index that has not switched yet; the fields it had added."""
        return reindex.abort(self)

    # -- ANN indexes and bulk loads (service/builds.py) ---------------------------------------------------------------
    def bulk_wanted(self, incoming: int) -> bool:
        return builds.bulk_wanted(self, incoming)

    def loading(self, incoming: int) -> AbstractContextManager[bool]:
        return builds.loading(self, incoming)

    def ensure_ann_indexes(self) -> list[str]:
        return builds.ensure_ann_indexes(self)

    def build(self, field: str | None = None, *, progress: Callable[[dict], None] | None = None) -> list[dict]:
        return builds.build(self, field, progress=progress)

    def drop_ann_indexes(self, field: str | None = None) -> list[str]:
        """Drop the ANN index of one or all vector fields, e.g. before a bulk add_vectors: inserting into a live HNSW
        graph is far slower than one build() afterwards. Until then searches of those fields scan exactly."""
        return builds.drop_ann_indexes(self, field)

    def all_vectors(self, field: str | None = None) -> tuple[np.ndarray, list[str]]:
        """Every stored vector of one field (float32, key order) and their keys, from one snapshot."""
        vf = self.spec.vector_field(field)
        with self.store.reader() as reader:
            chunks = list(reader.iter_vectors(vf.name))
        keys = [key for chunk_keys, _ in chunks for key in chunk_keys]
        array = np.concatenate([block for _, block in chunks]) if chunks else np.zeros((0, vf.dims), np.float32)
        return array, keys

    def export_vectors(self, path: Path | str, *, field: str | None = None, ids_path: Path | str | None = None) -> int:
        """Write every stored vector of one field to a .npy file (float32, key order) and, with ids_path, their ids
        one per line; the number written. Streams through a binary server-side cursor."""
        vf = self.spec.vector_field(field)
        path = Path(path)
        with self.store.reader() as reader:  # the count and the rows from one snapshot, whatever is written meanwhile
            total = reader.count_vectors(vf.name)
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, vf.dims))
            written = 0
            with open(ids_path, "w", encoding="utf-8") if ids_path else nullcontext() as ids_file:
                for keys, block in reader.iter_vectors(vf.name):
                    out[written : written + len(keys)] = block
                    written += len(keys)
                    if ids_file is not None:
                        ids_file.write("".join(f"{key}\n" for key in keys))
            out.flush()
            del out
        return written

    def write_documents(self, actions: list[documents.DocumentAction]) -> list[documents.DocumentResult]:
        """A batch of upload / merge / mergeOrUpload / delete actions with Azure's semantics (service.documents)."""
        return documents.write_documents(self, actions)

    def add_image_bytes(self, filename: str, data: bytes) -> tuple[str, IngestReport]:
        """Index an uploaded image (kept under PIXSEARCH_HOME/uploads/<index>/); returns its key."""
        return photos.add_image_bytes(self, filename, data)

    def remove_unfinished_uploads(self) -> list[str]:
        """Remove uploaded files whose row never committed (their process was killed in between)."""
        return photos.remove_unfinished_uploads(self)

    def add_regions(self, source: "str | Path | dict", *, photo_keys: Sequence[str] | None = None) -> "RegionReport":
        """Embed regions (object patches) of the photos: `grid`, or boxes from a COCO JSON / CSV / JSON Lines file
        (service/regions.py)."""
        return regions.add_regions(self, source, photo_keys=photo_keys)

    # -- faces and people (service/faces.py) ------------------------------------------------------------------------
    def set_faces(self, enabled: bool, *, detector: str | None = None) -> None:
        """Turn face detection on ("hog" or "cnn") or off for later runs; faces found so far are kept."""
        faces.set_faces(self, enabled, detector=detector)

    @property
    def has_faces(self) -> bool:
        """Whether faces were found for this index at some point (its people can be listed)."""
        return self.spec.kind == "photos" and faces.has_faces(self)

    def detect_faces(self) -> faces.FaceReport:
        """Find faces in every photo not scanned yet and group them (what `index --faces` runs after ingest)."""
        return faces.detect_faces(self)

    def people(self, *, with_photos: bool = False) -> list[dict[str, Any]]:
        """Every person: id, name, faces, photo_count, sample_face, sample_photo; with_photos: their photos."""
        return faces.list_people(self, with_photos=with_photos)

    def person(self, person: int) -> dict[str, Any]:
        return faces.get_person(self, person)

    def name_person(self, person: int, name: str | None) -> dict[str, Any]:
        return faces.name_person(self, person, name)

    def merge_people(self, into: int, others: Sequence[int]) -> dict[str, Any]:
        return faces.merge_people(self, into, others)

    def remove_face(self, face_id: str) -> dict[str, Any]:
        return faces.remove_face(self, face_id)

    def forget_person(self, person: int) -> int:
        """Delete a person with their faces and descriptors; the number of faces deleted."""
        return faces.forget_person(self, person)

    def forget_faces(self) -> int:
        """Delete every face, descriptor and person, and turn detection off; the number of faces deleted."""
        return faces.forget_all(self)

    def recluster_people(self, *, threshold: float | None = None, min_faces: int | None = None) -> tuple[int, int]:
        return faces.recluster(self, threshold=threshold, min_faces=min_faces)

    def photo_faces(self, key: str) -> list[dict[str, Any]]:
        return faces.photo_faces(self, key)

    def face_thumbnail(self, face_id: str) -> bytes:
        return faces.face_thumbnail_bytes(self, face_id)

    def photos_with_face(self, *, face_id: str | None = None, image: bytes | Image.Image | None = None,
                         k: int = 50) -> list[dict[str, Any]]:
        return faces.photos_with_face(self, face_id=face_id, image=image, k=k)

    def thumbnail(self, key: str, size: int = 256) -> bytes:
        """A WebP thumbnail (longest side `size`: 128, 256, 512 or 1024) of a stored photo."""
        return photos.thumbnail(self, key, size)

    def stats(self) -> dict[str, Any]:
        stats = self.store.stats()
        captions = captioning.caption_summary(self.spec)
        return {**stats, "captions": captions} if captions else stats

    # -- search ----------------------------------------------------------------------------------------------------
    def query_vector(self, query: Query) -> tuple[str, np.ndarray]:
        """The vector field and vector a query searches (the same resolution search uses)."""
        terms = query_terms(SearchRequest(text=query.text, image=query.image))
        if not terms:
            raise ValueError("empty query: give search text or --image FILE")
        return self.resolve(terms)

    def resolve(self, terms: Sequence[Term], field: str | None = None) -> tuple[str, np.ndarray]:
        """The vector field and combined query vector of parsed query terms."""
        ctx = self.search_context()
        embedded = embed_terms(ctx, terms, field)
        with self.store.reader() as reader:
            return embedded.field, combine_embedded(reader, embedded)

    def query(self, request: SearchRequest, *, allow_file_terms: bool = True) -> SearchResponse:
        """The full search: query expressions, filters, vector/keyword/hybrid modes, cutoffs, sorting, paging,
        facets (see search/request.py). allow_file_terms=False refuses `image:PATH` (requests from the network)."""
        return run_request(self.search_context(allow_file_terms=allow_file_terms), request)

    def search(
        self,
        query: Query | str,
        k: int = 10,
        *,
        filter: str | Filter | None = None,
        mode: str | None = None,
        options: QueryOptions | None = None,
    ) -> SearchResponse:
        """Search by text (an expression: plain text, or terms like `"beach" + "sunset" - "people"`) or by image."""
        if isinstance(query, str):
            query = Query(text=query)
        if query.image is None and not (query.text or "").strip():
            raise ValueError("empty query: give search text or --image FILE")
        if not 1 <= k <= MAX_TOP:
            raise ValueError(f"k must be between 1 and {MAX_TOP}, got {k}")
        return self.query(SearchRequest(text=query.text, image=query.image, filter=filter, mode=mode, top=k,
                                        options=options or QueryOptions()))

    def search_vector(
        self,
        vector: Any,
        k: int = 10,
        *,
        field: str | None = None,
        filter: Filter | None = None,
        options: QueryOptions | None = None,
    ) -> SearchResult:
        if not 1 <= k <= MAX_TOP:
            raise ValueError(f"k must be between 1 and {MAX_TOP}, got {k}")
        options = options or QueryOptions()
        # one statement: the common case needs no snapshot
        result = self.store.search(field, vector, k, filter=filter, options=options, count_if_short=False)
        if len(result.hits) == k:
            return result
        # Short: the hits and the count of what matches come from one snapshot, so the reason given is right.
        with self.store.reader() as reader:
            return reader.search(field, vector, k, filter=filter, options=options)

    def explain(
        self,
        query: Query | str | None = None,
        k: int = 10,
        *,
        vector: Any = None,
        field: str | None = None,
        filter: Filter | None = None,
        options: QueryOptions | None = None,
        analyze: bool = False,
    ) -> str:
        if vector is None:
            if isinstance(query, str):
                query = Query(text=query)
            field, vector = self.query_vector(query or Query())
        return self.store.explain(field, vector, k, filter=filter, options=options or QueryOptions(), analyze=analyze)

    # -- recall ----------------------------------------------------------------------------------------------------
    def evaluate(
        self, *, field: str | None = None, k: int = 10, sample: int = 100, options: QueryOptions | None = None
    ) -> evaluation.Evaluation:
        """Recall@k of the ANN index against exact search, on `sample` stored vectors used as queries."""
        vf = self.spec.vector_field(field)
        truth = evaluation.ground_truth(self.store, vf, k, sample)
        return evaluation.evaluate(self.store, vf, k, truth, options or QueryOptions())

    def tune(
        self, target_recall: float = 0.95, *, field: str | None = None, k: int = 10, sample: int = 100
    ) -> dict[str, Any]:
        """Find the smallest ef_search (HNSW) or probes (IVFFlat) reaching `target_recall` and store it in the index
        settings, where later searches pick it up."""
        if not 0 < target_recall <= 1:
            raise ValueError("target recall must be in (0, 1]")
        vf = self.spec.vector_field(field)
        if vf.algorithm == "exact":
            raise SchemaError(f"vector field {vf.name!r} uses exact search: recall is always 1, nothing to tune")
        lists = self.spec.settings.get("built", {}).get(vf.name, {}).get("lists")
        if vf.algorithm == "ivfflat" and lists is None:
            raise SchemaError(f"the IVFFlat index of {vf.name!r} is not built yet: pixsearch indexes rebuild {self.name}")
        truth = evaluation.ground_truth(self.store, vf, k, sample)
        chosen, tried, reached = evaluation.tune(self.store, vf, k, truth, target_recall, lists)
        if chosen is None:
            raise SchemaError("the index is empty: nothing to tune on")
        tuned = {**chosen.settings, "target_recall": target_recall, "recall": round(chosen.recall, 4), "k": k,
                 "reached": reached, "index_used": chosen.index_used}
        self.update_settings({"tuned": {vf.name: tuned}})
        return {"field": vf.name, "tuned": tuned, "tried": [t.to_json() for t in tried]}

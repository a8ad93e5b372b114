"""The façade every front door (CLI, Python, REST, web) goes through: Engine opens indexes, Index does the work.

Imports run one way inside the package, top to bottom (tests/test_architecture.py checks there is no cycle):

backup.py      backups of a library in one file, restores from them, scheduled backups (uses Engine)
engine.py      the database, loaded models (one per index's model) and caches a process shares; opens Index
index.py       Index: the facade of one index; each method hands over to a feature module below
photos.py      uploads, thumbnails and a folder watcher's changes: the photo files the server opens itself
library.py     indexing photo files (the index's side of ingest)
faces.py       faces found in photos, grouped into people; naming, merging, forgetting; photos of a face
regions.py     regions (object patches) of photos, with vectors of their own
reindex.py     moving an index to another model without downtime
documents.py   Azure-style document batches (upload / merge / mergeOrUpload / delete)
duplicates.py  near-duplicate groups
captioning.py  generated captions (a vision LLM's), cached by content hash, after ingest; what they cost
captions.py    bringing photo indexes up to this release's fields; caption vectors
builds.py      ANN index builds and the bulk-load path
roots.py       the folders an index was built from, the only places photo files are opened
core.py        IndexCore: spec, store, model binding, and the one place the definition and settings change
thumbnails.py  the bounded on-disk thumbnail cache
"""
from pixsearch.service.documents import DocumentAction, DocumentResult, Outcome
from pixsearch.service.engine import Engine
from pixsearch.service.faces import FaceNotFound, FaceReport, FacesNotEnabled, PersonNotFound
from pixsearch.service.index import Index, ModelMismatchError, Query
from pixsearch.service.photos import StorageError
from pixsearch.service.roots import PhotoNotFound

__all__ = ["DocumentAction", "DocumentResult", "Engine", "FaceNotFound", "FaceReport", "FacesNotEnabled", "Index",
           "ModelMismatchError", "Outcome", "PersonNotFound", "PhotoNotFound", "Query", "StorageError"]

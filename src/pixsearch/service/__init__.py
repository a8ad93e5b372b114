"""The façade every front door (CLI, Python, REST, web) goes through: Engine opens indexes, Index does the work.

engine.py     the database, loaded models (one per index's model) and caches a process shares
index.py      one index: ingest, vectors, documents, search, builds, tuning
documents.py  Azure-style document batches (upload / merge / mergeOrUpload / delete)
photos.py     the photo files the server opens itself: uploads and thumbnails, inside the index's roots only
thumbnails.py the bounded on-disk thumbnail cache
"""
from pixsearch.service.documents import DocumentAction, DocumentResult, Outcome
from pixsearch.service.engine import Engine
from pixsearch.service.index import Index, ModelMismatchError, Query
from pixsearch.service.photos import PhotoNotFound, StorageError

__all__ = ["DocumentAction", "DocumentResult", "Engine", "Index", "ModelMismatchError", "Outcome", "PhotoNotFound",
           "Query", "StorageError"]

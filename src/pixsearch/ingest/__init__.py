"""Files -> pixels -> vectors -> rows, as a staged pipeline: scan, decode (threads), embed (batches), write (COPY)."""
from pixsearch.ingest.pipeline import IngestOptions, IngestProgress, IngestReport, ingest_paths

__all__ = ["IngestOptions", "IngestProgress", "IngestReport", "ingest_paths"]

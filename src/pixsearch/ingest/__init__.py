"""Files -> pixels -> vectors -> rows, as a staged pipeline: scan, decode (threads), embed (batches), write (COPY)."""
from pixsearch.ingest.pipeline import IngestReport, IngestProgress, ingest_paths

__all__ = ["IngestProgress", "IngestReport", "ingest_paths"]

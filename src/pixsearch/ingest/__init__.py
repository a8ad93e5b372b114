"""Files -> pixels -> vectors -> rows, as a staged pipeline: scan, decode (threads), embed (batches), write (COPY)."""
from pixsearch.ingest.pipeline import IngestOptions, IngestProgress, IngestReport, NoProgress, ingest_paths

__all__ = ["IngestOptions", "IngestProgress", "IngestReport", "NoProgress", "ingest_paths"]

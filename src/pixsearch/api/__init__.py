"""The REST front door: a FastAPI app over pixsearch.service (Azure-AI-Search-like JSON shapes)."""
from pixsearch.api.app import create_app

__all__ = ["create_app"]

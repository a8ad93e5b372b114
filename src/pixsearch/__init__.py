"""pixsearch: self-hosted semantic image search on PostgreSQL + pgvector."""

__version__ = "0.1.0"

"""pixsearch: self-hosted semantic image search on PostgreSQL + pgvector.

    import pixsearch
    client = pixsearch.connect()          # see pixsearch.client

Importing pixsearch is cheap: the database and the models open on first use.
"""

__version__ = "0.1.0"

__all__ = ["Client", "SearchHit", "SearchHits", "SimilarityIndex", "connect", "from_fiftyone"]


def __getattr__(name: str):
    # The Python API is loaded on first use, so `import pixsearch` stays light for the CLI and the server.
    if name in __all__:
        from pixsearch import client

        return getattr(client, name)
    raise AttributeError(f"module 'pixsearch' has no attribute {name!r}")

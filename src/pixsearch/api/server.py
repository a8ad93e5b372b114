"""Run the REST API with uvicorn (what `pixsearch serve` calls)."""
from __future__ import annotations

from typing import Iterable

from pixsearch.api.app import create_app
from pixsearch.api.errors import DEFAULT_MAX_BODY_BYTES
from pixsearch.service import Engine


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    admin_keys: Iterable[str] = (),
    query_keys: Iterable[str] = (),
    *,
    allow_anonymous: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log_level: str = "info",
    stored_keys: bool = True,
) -> None:
    """Serve until interrupted. Blocks; the caller owns (and closes) the engine. With stored_keys, the keys made by
    `pixsearch keys create` are accepted too."""
    import uvicorn

    app = create_app(
        engine,
        admin_keys,
        query_keys,
        allow_anonymous=allow_anonymous,
        max_body_bytes=max_body_bytes,
        key_lookup=engine.api_key_role if stored_keys else None,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)

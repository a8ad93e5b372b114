"""Run the REST API and the search page with uvicorn (what `pixsearch serve` and `pixsearch demo --serve` call)."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from pixsearch.api.app import create_app
from pixsearch.api.errors import DEFAULT_MAX_BODY_BYTES
from pixsearch.api.origin import host_names
from pixsearch.service import Engine


class AddressInUseError(OSError):
    """The host:port cannot be bound (taken, or not an address of this machine)."""


def bind(host: str, port: int) -> socket.socket:
    """Bind before announcing anything, so a taken port is one clear error instead of a link that does not work."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only sets TCP_NODELAY on connections whose socket does, and without it Nagle's
    # algorithm holds each keep-alive response's body back until the client's delayed ACK (~40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AddressInUseError(f"cannot listen on {host}:{port}: {exc.strerror} (choose another with --port)") from None
    # Listening now, not when uvicorn gets to it: a client given the announced link at once (a script, a test) has
    # its connection queued until the server accepts it, instead of refused.
    sock.listen(2048)
    return sock


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    admin_keys: Iterable[str] = (),
    query_keys: Iterable[str] = (),
    *,
    allow_anonymous: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log_level: str = "warning",
    log_format: str = "text",
    stored_keys: bool = True,
    page_index: str | None = None,
    announce: Callable[[str], None] | None = None,
    allowed_hosts: Iterable[str] = (),
) -> None:
    """Serve until interrupted. Blocks; the caller owns (and closes) the engine. With stored_keys, the keys made by
    `pixsearch keys create` are accepted too. `announce` gets the base URL once the port is bound. Requests must
    name the server by the address it binds (loopback names on loopback) or one of `allowed_hosts`.
    log_format "json": the process's logging was set up by api.logs.log_json; uvicorn keeps it (no text handlers
    of its own) and logs its start at INFO, and each request is logged by route (api/metrics.py), not uvicorn."""
    import uvicorn

    app = create_app(
        engine,
        admin_keys,
        query_keys,
        allow_anonymous=allow_anonymous,
        max_body_bytes=max_body_bytes,
        key_lookup=engine.api_key_role if stored_keys else None,
        page_index=page_index,
        allowed_hosts=host_names(host, allowed_hosts),
    )
    engine.remove_unfinished_uploads()  # files of uploads a killed server wrote but never committed
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    if log_format == "json":
        config = uvicorn.Config(app, host=host, port=bound_port, log_config=None, log_level="info", access_log=False,
                                server_header=False)
    else:
        config = uvicorn.Config(app, host=host, port=bound_port, log_level=log_level, server_header=False)
    if announce is not None:
        shown = f"[{host}]" if ":" in host else host
        announce(f"http://{shown}:{bound_port}/")
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def serving_in_thread(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an app with uvicorn in a background thread on a free port (tests, benchmarks); yields its base URL."""
    import uvicorn

    sock = bind(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level="warning",
                                          lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()

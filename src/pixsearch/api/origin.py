"""Requests must name this server and come from its own pages.

DNS rebinding: a web page on attacker.example can make its own name resolve to 127.0.0.1 and then talk to a server
on loopback as if same-origin; its requests still carry `Host: attacker.example`, so only the names the server is
meant to be reached by are accepted.

Cross-site writes: a form on another site can POST (even multipart/form-data, a CORS "simple request" that needs no
preflight) to a server on loopback; browsers label such requests with `Origin` and `Sec-Fetch-Site`, so state-
changing requests from another origin are refused.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Headers a reverse proxy adds: a request carrying one came from elsewhere, whatever address it arrived from.
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


def loopback_client(scope: dict) -> bool:
    """A request made on this machine, straight to the server: its peer is a loopback address and no proxy relayed
    it (a proxy on the same machine connects from loopback too, on behalf of anyone)."""
    client = scope.get("client")
    if not client:
        return False
    try:
        if not ipaddress.ip_address(str(client[0]).split("%")[0]).is_loopback:
            return False
    except ValueError:
        return False
    return not any(name.lower() in PROXY_HEADERS for name, _ in scope.get("headers") or [])


def host_names(bound_host: str, extra: Iterable[str] = ()) -> tuple[str, ...] | None:
    """The names a server bound to `bound_host` is reached by: loopback names for loopback, the address itself for
    a specific address, and anything for a wildcard bind (0.0.0.0, ::) unless names are given."""
    extra = tuple(extra)
    if bound_host in ("0.0.0.0", "::", ""):
        return extra or None
    if bound_host in LOOPBACK_NAMES:
        return LOOPBACK_NAMES + extra
    return (bound_host,) + extra


def _hostname(netloc: str) -> str:
    try:
        return (urlsplit("//" + netloc).hostname or "").lower()
    except ValueError:
        return ""


class OriginGuard:
    def __init__(self, app: Any, allowed_hosts: Iterable[str] | None):
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                from pixsearch.api.errors import error_response

                await error_response(*refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: dict) -> tuple[int, str, str] | None:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers") or []}
        host = headers.get("host", "")
        if self.allowed is not None and _hostname(host) not in self.allowed:
            return 421, "MisdirectedRequest", "this server does not answer to that host name"
        if scope["method"] in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if headers.get("sec-fetch-site") == "cross-site" or (
            origin is not None and origin != "null" and urlsplit(origin).netloc.lower() != host.lower()
        ):
            return 403, "CrossOriginRefused", "requests from other web sites are refused"
        if origin == "null":
            return 403, "CrossOriginRefused", "requests from documents without an origin are refused"
        return None

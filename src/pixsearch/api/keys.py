"""API keys: admin keys may do everything, query keys only read documents (search, lookup, count), as in Azure AI
Search. Only SHA-256 hashes are kept in memory; the `api-key` header is hashed and compared in constant time."""
from __future__ import annotations

import hmac
import re
from typing import Callable, Iterable

from pixsearch.store.keys import hash_key

ADMIN, QUERY = "admin", "query"
HEADER = "api-key"
OPEN_PATHS = {"/", "/healthz", "/docs", "/openapi.json"}
OPEN_PREFIXES = ("/static/",)  # the search page's own files; everything they fetch needs a key
# (method, path) patterns a query key may use; everything else needs an admin key. Later routes (the OData
# `indexes('NAME')` form, autocomplete, suggest) add their patterns here.
QUERY_ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("GET", re.compile(r"^/thumbnails/[^/]+$")),
    ("POST", re.compile(r"^/indexes/[^/]+/docs/search$")),
    ("POST", re.compile(r"^/indexes/[^/]+/images/search$")),
    ("GET", re.compile(r"^/indexes/[^/]+/docs/[^/]+$")),
    ("POST", re.compile(r"^/indexes\('[^/]+'\)/docs/search\.post\.search$")),
    ("GET", re.compile(r"^/indexes\('[^/]+'\)/docs/\$count$")),
    ("GET", re.compile(r"^/indexes\('[^/]+'\)/docs\('.+'\)$")),
]


class KeyRing:
    """Keys given at start-up (hashed in memory), then `lookup` (the keys `pixsearch keys create` stored, by hash)."""

    def __init__(
        self,
        admin_keys: Iterable[str] = (),
        query_keys: Iterable[str] = (),
        lookup: Callable[[str], str | None] | None = None,
    ):
        self.lookup = lookup
        self._hashes: list[tuple[str, str]] = []
        for role, keys in ((ADMIN, admin_keys), (QUERY, query_keys)):
            for key in keys:
                if not key or not key.strip():
                    raise ValueError("API keys cannot be empty")
                self._hashes.append((hash_key(key), role))

    def __bool__(self) -> bool:
        return bool(self._hashes) or self.lookup is not None

    def role(self, presented: str | None) -> str | None:
        """The role of a presented key, or None. Compares against every stored hash (no early exit)."""
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for stored, role in self._hashes:
            if hmac.compare_digest(stored, digest) and found != ADMIN:
                found = role
        return found


def required_role(method: str, path: str) -> str | None:
    """None for open routes, QUERY for document reads, ADMIN for the rest."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    for m, pattern in QUERY_ROUTES:
        if method == m and pattern.match(path):
            return QUERY
    return ADMIN


class AuthMiddleware:
    """Checks the `api-key` header before anything else is read: no or unknown key -> 401, a query key on an admin
    route -> 403. With `allow_anonymous` (and no keys) every request passes."""

    def __init__(self, app, ring: KeyRing, allow_anonymous: bool = False):
        self.app = app
        self.ring = ring
        self.allow_anonymous = allow_anonymous

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "http" and not self.allow_anonymous:
            from pixsearch.api.errors import error_response

            needed = required_role(scope["method"], scope["path"])
            if needed is not None:
                presented = None
                for name, value in scope.get("headers") or []:
                    if name.decode("latin-1").lower() == HEADER:
                        presented = value.decode("latin-1")
                role = self.ring.role(presented)
                if role is None and presented and self.ring.lookup is not None:
                    import anyio

                    role = await anyio.to_thread.run_sync(self.ring.lookup, presented)
                if role is None:
                    message = "missing api-key header" if not presented else "invalid api-key"
                    await error_response(401, "Unauthorized", message)(scope, receive, send)
                    return
                if needed == ADMIN and role != ADMIN:
                    await error_response(403, "Forbidden", "this operation needs an admin key")(scope, receive, send)
                    return
        await self.app(scope, receive, send)

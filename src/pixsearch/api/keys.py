"""API keys: admin keys may do everything, query keys only read documents (search, lookup, count), as in Azure AI
Search. Only SHA-256 hashes are kept in memory; the `api-key` header is hashed and compared in constant time."""
from __future__ import annotations

import hmac
import re
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable

import anyio

from pixsearch.api.errors import answer_early, error_response, unavailable_response
from pixsearch.api.origin import loopback_client
from pixsearch.api.people import QUERY_PATTERNS as PEOPLE_QUERY_PATTERNS
from pixsearch.db import DatabaseError
from pixsearch.limits import API_KEY_CACHE_SECONDS
from pixsearch.store.keys import hash_key

ADMIN, QUERY = "admin", "query"
# where AuthMiddleware leaves the checked caller's role for the handlers (request.state.role)
ROLE_STATE = "role"
HEADER = "api-key"
OPEN_PATHS = {"/", "/healthz", "/docs", "/openapi.json"}
OPEN_PREFIXES = ("/static/", "/docs-assets/")  # the page's and the API docs' own files; their fetches need a key
# Open to requests made on this machine straight to the server (a local Prometheus or agent), admin keys otherwise.
LOOPBACK_OPEN_PATHS = {"/metrics"}
MAX_CACHED_KEYS = 4096
# (method, path) patterns a query key may use; everything else needs an admin key. Later routes (the OData
# `indexes('NAME')` form, autocomplete, suggest) add their patterns here.
QUERY_ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("GET", re.compile(r"^/thumbnails/[^/]+$")),
    ("POST", re.compile(r"^/indexes/[^/]+/docs/search$")),
    ("POST", re.compile(r"^/indexes/[^/]+/images/search$")),
    ("GET", re.compile(r"^/indexes/[^/]+/docs/[^/]+$")),
    ("GET", re.compile(r"^/indexes/[^/]+/capabilities$")),
    ("GET", re.compile(r"^/whoami$")),
    ("POST", re.compile(r"^/indexes\('[^/]+'\)/docs/search\.post\.search$")),
    ("GET", re.compile(r"^/indexes\('[^/]+'\)/docs/\$count$")),
    ("GET", re.compile(r"^/indexes\('[^/]+'\)/docs\('.+'\)$")),
    # people: names, boxes, face thumbnails and photos of a face (never a descriptor: no route returns one)
    *((method, re.compile(pattern)) for method, pattern in PEOPLE_QUERY_PATTERNS),
]


class KeyRing:
    """Keys given at start-up (hashed in memory), then `lookup` (the keys `pixsearch keys create` stored, by hash).

    Stored-key answers (a role, or unknown) are kept for API_KEY_CACHE_SECONDS, by hash, so key checks do not
    take a database connection per request and cannot queue behind searches; a revoked key stops working within
    that time.
    """

    def __init__(
        self,
        admin_keys: Iterable[str] = (),
        query_keys: Iterable[str] = (),
        lookup: Callable[[str], str | None] | None = None,
        *,
        cache_seconds: float = API_KEY_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.lookup = lookup
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._hashes: list[tuple[str, str]] = []
        self._cache: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._lock = threading.Lock()
        for role, keys in ((ADMIN, admin_keys), (QUERY, query_keys)):
            for key in keys:
                if not key or not key.strip():
                    raise ValueError("API keys cannot be empty")
                self._hashes.append((hash_key(key), role))

    def __bool__(self) -> bool:
        return bool(self._hashes) or self.lookup is not None

    def role(self, presented: str | None) -> str | None:
        """The role of a presented start-up key, or None. Compares against every stored hash (no early exit)."""
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for stored, role in self._hashes:
            if hmac.compare_digest(stored, digest) and found != ADMIN:
                found = role
        return found

    def cached(self, presented: str) -> tuple[bool, str | None]:
        """(known, role) from the stored-key cache."""
        digest = hash_key(presented)
        with self._lock:
            entry = self._cache.get(digest)
            if entry is not None and entry[1] > self.clock():
                return True, entry[0]
        return False, None

    def look_up(self, presented: str) -> str | None:
        """The stored key's role (None: unknown or revoked), asking the database only when the cache has no fresh
        answer. Database errors (DatabaseError) propagate: the caller answers 503."""
        known, role = self.cached(presented)
        if known or self.lookup is None:
            return role
        role = self.lookup(presented)
        with self._lock:
            self._cache[hash_key(presented)] = (role, self.clock() + self.cache_seconds)
            while len(self._cache) > MAX_CACHED_KEYS:
                self._cache.popitem(last=False)
        return role


def required_role(method: str, path: str) -> str | None:
    """None for open routes, QUERY for document reads, ADMIN for the rest."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    for m, pattern in QUERY_ROUTES:
        if method == m and pattern.match(path):
            return QUERY
    return ADMIN


class AuthMiddleware:
    """Checks the `api-key` header before the body is read (GuardMiddleware, outside it, reads nothing; the body is
    read by BodyGuardMiddleware, inside it): no or unknown key -> 401, a query key on an admin
    route -> 403. With `allow_anonymous`, a request without a key has the query role: it may search and read,
    never write."""

    def __init__(self, app, ring: KeyRing, allow_anonymous: bool = False):
        self.app = app
        self.ring = ring
        self.allow_anonymous = allow_anonymous

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "http":
            needed = required_role(scope["method"], scope["path"])
            if scope["path"] in LOOPBACK_OPEN_PATHS and loopback_client(scope):
                needed = None
            if needed is not None:
                refusal, role = await self._check(scope, needed)
                if refusal is not None:  # answered before the body is read: a keyless upload costs nothing
                    await answer_early(scope, refusal)(scope, receive, send)
                    return
                scope.setdefault("state", {})[ROLE_STATE] = role
        await self.app(scope, receive, send)

    async def _check(self, scope: dict, needed: str):
        """(None, the caller's role) when the request may go on, else (the refusal, None)."""
        presented = None
        for name, value in scope.get("headers") or []:
            if name.decode("latin-1").lower() == HEADER:
                presented = value.decode("latin-1")
        role = self.ring.role(presented)
        if role is None and presented and self.ring.lookup is not None:
            known, role = self.ring.cached(presented)
            if not known:
                try:
                    role = await anyio.to_thread.run_sync(self.ring.look_up, presented)
                except DatabaseError as exc:
                    return unavailable_response(exc), None
        if role is None and not presented and self.allow_anonymous:
            role = QUERY
        if role is None:
            message = "missing api-key header" if not presented else "invalid api-key"
            return error_response(401, "Unauthorized", message), None
        if needed == ADMIN and role != ADMIN:
            message = "this operation needs an admin key"
            if not presented:
                message += " (a server started with --anonymous lets requests without a key search and read only)"
            return error_response(403, "Forbidden", message), None
        return None, role

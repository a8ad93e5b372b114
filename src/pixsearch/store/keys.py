"""API keys: an admin role (everything) and a query role (search and read). Only SHA-256 hashes are stored."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg

from pixsearch.db import Database, DatabaseError

ROLES = ("admin", "query")
KEY_PREFIX = "pxs_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(db: Database, role: str, name: str = "") -> tuple[ApiKey, str]:
    """Make a key; returns its record and the secret, which is shown once and never stored."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = secrets.token_hex(4)
    with db.connection() as conn:
        row = conn.execute(
            "INSERT INTO pixsearch_api_keys (id, key_hash, role, name) VALUES (%s, %s, %s, %s)"
            " RETURNING id, role, name, created_at, revoked_at",
            (key_id, hash_key(secret), role, name),
        ).fetchone()
    return ApiKey(*row), secret


def list_keys(db: Database) -> list[ApiKey]:
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT id, role, name, created_at, revoked_at FROM pixsearch_api_keys ORDER BY created_at, id"
        ).fetchall()
    return [ApiKey(*row) for row in rows]


def revoke_key(db: Database, key_id: str) -> bool:
    with db.connection() as conn:
        cur = conn.execute(
            "UPDATE pixsearch_api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,)
        )
        return cur.rowcount == 1


def role_for(db: Database, secret: str) -> str | None:
    """The role of a presented key, or None if it is unknown or revoked (looked up by hash, so no timing leak
    about the secret's characters)."""
    if not secret:
        return None
    try:
        with db.side_connection() as conn:
            row = conn.execute(
                "SELECT role FROM pixsearch_api_keys WHERE key_hash = %s AND revoked_at IS NULL", (hash_key(secret),)
            ).fetchone()
    except psycopg.Error as exc:  # any other failure of the lookup: no key can be checked, whoever presents it
        raise DatabaseError(f"API keys cannot be looked up: {str(exc).strip() or type(exc).__name__}") from exc
    return row[0] if row else None

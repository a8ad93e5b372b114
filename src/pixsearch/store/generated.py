"""Captions bought from a vision LLM, kept by captioner settings and content hash (pixsearch_generated_captions,
migration 6), whatever index asked: a rerun, a moved photo or another index over the same files with the same
model, prompt and server reads them here instead of paying for them again."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from psycopg import sql

from pixsearch.db import Database

TABLE = sql.Identifier("pixsearch_generated_captions")
COLUMNS = ("content_hash", "title", "description", "keywords", "refusal", "prompt_tokens", "completion_tokens")
MAX_LOOKUP = 10_000  # content hashes per lookup statement


@dataclass(frozen=True)
class StoredCaption:
    """One bought caption: title/description/keywords, or `refusal` when the model answered with no caption."""

    content_hash: str
    title: str | None
    description: str | None
    keywords: tuple[str, ...]
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def lookup_sql() -> sql.Composed:
    return sql.SQL("SELECT {columns} FROM {table} WHERE settings_id = %s AND content_hash = ANY(%s)").format(
        columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), table=TABLE)


def insert_sql() -> sql.Composed:
    """One caption; a caption already there for these settings and bytes (a concurrent run bought it too) stays."""
    names = ("settings_id", "captioner", *COLUMNS)
    return sql.SQL("INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT (settings_id, content_hash) "
                   "DO NOTHING").format(table=TABLE, names=sql.SQL(", ").join(map(sql.Identifier, names)),
                                        values=sql.SQL(", ").join(sql.Placeholder() * len(names)))


def cached_captions(db: Database, settings_id: str, hashes: Sequence[str]) -> dict[str, StoredCaption]:
    """The stored captions of these contents for these settings, by content hash (one statement per 10,000)."""
    unique = sorted(set(hashes))
    found: dict[str, StoredCaption] = {}
    with db.connection() as conn:
        for start in range(0, len(unique), MAX_LOOKUP):
            rows = conn.execute(lookup_sql(), (settings_id, unique[start:start + MAX_LOOKUP])).fetchall()
            for digest, title, description, keywords, refusal, prompt, completion in rows:
                found[digest] = StoredCaption(digest, title, description, tuple(keywords or ()), refusal, prompt,
                                              completion)
    return found


def store_caption(db: Database, settings_id: str, captioner: str, caption: StoredCaption) -> None:
    """Keep one caption as soon as it is bought (an interrupted run loses none it paid for)."""
    with db.connection() as conn:
        conn.execute(insert_sql(), (settings_id, captioner, caption.content_hash, caption.title, caption.description,
                                    list(caption.keywords), caption.refusal, caption.prompt_tokens,
                                    caption.completion_tokens))

"""SQL for ingest keys."""

from __future__ import annotations

import asyncpg

from app.model.results import KeyRow
from app.storage.driver import Connection, Pool


class KeyExists(Exception):
    """A key with that value already exists."""


async def insert_key(conn: Connection | Pool, key: str) -> KeyRow:
    try:
        row = await conn.fetchrow(
            "INSERT INTO ingest_keys (key) VALUES ($1) RETURNING key, created_at, disabled_at", key
        )
    except asyncpg.UniqueViolationError as exc:
        raise KeyExists(key) from exc
    assert row is not None  # INSERT ... RETURNING returns the row
    return KeyRow(**dict(row))


async def list_keys(conn: Connection | Pool) -> list[KeyRow]:
    rows = await conn.fetch(
        "SELECT key, created_at, disabled_at FROM ingest_keys ORDER BY created_at, key"
    )
    return [KeyRow(**dict(r)) for r in rows]


async def revoke_key(conn: Connection | Pool, key: str) -> bool:
    """Disable a key (idempotent for a disabled one); False if it does not exist."""
    row = await conn.fetchrow(
        "UPDATE ingest_keys SET disabled_at = coalesce(disabled_at, now()) WHERE key = $1 "
        "RETURNING key",
        key,
    )
    return row is not None


async def active_keys(conn: Connection | Pool) -> set[str]:
    rows = await conn.fetch("SELECT key FROM ingest_keys WHERE disabled_at IS NULL")
    return {r["key"] for r in rows}

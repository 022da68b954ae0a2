"""Ingest keys: generation and the per-process cache the socket checks joins against.

The cache is refreshed from the database every `key_refresh_seconds`, so a key revoked
through any server process is refused by every process within that time, and a join
never costs a database round trip (refused joins are retried forever by clients).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets

from app.settings import Settings
from app.storage import db, failures, key_store

log = logging.getLogger("vidmetrics.keys")


def generate_key() -> str:
    """16 random bytes, base64 (as mave does)."""
    return base64.b64encode(secrets.token_bytes(16)).decode()


class KeyCache:
    def __init__(self, pool: db.Pool, refresh_seconds: float) -> None:
        self._pool = pool
        self._refresh_seconds = refresh_seconds
        self._active: frozenset[str] = frozenset()
        self.generation = 0  # grows whenever the active set changes
        self._task: asyncio.Task[None] | None = None

    def is_active(self, key: str) -> bool:
        return key in self._active

    async def refresh(self) -> None:
        with failures.translated():
            active = frozenset(await key_store.active_keys(self._pool))
        if active != self._active:
            self._active = active
            self.generation += 1

    async def start(self) -> None:
        try:
            await self.refresh()
        except failures.StorageError as exc:
            log.warning("could not load ingest keys yet: %s", exc)
        self._task = asyncio.create_task(self._loop(), name="key-cache")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.refresh()
            except failures.StorageError as exc:
                # keep the last known set: a database outage must not refuse every join
                log.debug("key refresh failed: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def example_key(url: str, settings: Settings) -> tuple[str | None, bool]:
    """The embedded setup's example key (created on first start), and whether it is new."""
    if not settings.embedded:
        return None, False
    path = settings.data_dir / "example-key"
    if path.exists():
        return path.read_text().strip(), False
    key = generate_key()
    conn = await db.connect(url)
    try:
        await key_store.insert_key(conn, key)
    finally:
        await conn.close()
    path.write_text(key)
    return key, True

"""Connection pool, database URLs and migrations."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson
from alembic import command
from alembic.config import Config

from app.resources import MIGRATIONS
from app.storage import backend, driver

log = logging.getLogger("vidmetrics")

# what the layers above hold without knowing the driver
Pool = driver.Pool
Connection = driver.Connection
Record = driver.Record


def sqlalchemy_url(url: str) -> str:
    """postgresql://... -> postgresql+asyncpg://... (asyncpg's dialect, same query string)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def redact(url: str) -> str:
    """The URL with any password replaced, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def alembic_config(url: str) -> Config:
    config = Config()  # no ini file: everything it needs is set here
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url
    return config


def migrate(url: str, revision: str = "head", *, progress: bool = False) -> None:
    """Upgrade the schema to `revision` (idempotent), then run the one-off data jobs a
    migration left (the rollup backfill; progress=True shows a progress bar). Blocking:
    call from sync code or a thread."""
    command.upgrade(alembic_config(url), revision)
    if revision == "head":
        asyncio.run(_backfill(url, progress))


async def _backfill(url: str, progress: bool) -> None:
    from tqdm import tqdm

    from app.storage import rebuild

    conn = await connect(url)
    try:
        with tqdm(
            unit="table", desc="rollups", disable=not progress, file=sys.stderr, leave=False
        ) as bar:
            if await rebuild.backfill(conn, bar):
                log.info("rollups rebuilt from the stored sessions")
    finally:
        await conn.close()


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


async def _init_connection(conn: Connection) -> None:
    # binary jsonb (a version byte, then the text) so that COPY can carry it too
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json", encoder=json.dumps, decoder=orjson.loads, schema="pg_catalog", format="text"
    )


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    shard: int | None = None,
    statement_seconds: float | None = None,
) -> Pool:
    """shard: the rollup shard this process writes (see rollups.SHARDS).

    statement_seconds: a pool for questions, not writes: PostgreSQL cancels any statement
    of its connections that runs longer (asyncpg.QueryCanceledError), and runs each on one core
    (no parallel workers), so that the heaviest question leaves the writer a core."""
    settings = {"application_name": "vidmetrics"}
    if shard is not None:
        settings["vidmetrics.shard"] = str(shard)
    command_timeout = 60.0
    if statement_seconds is not None:
        settings["application_name"] = "vidmetrics-query"
        settings["statement_timeout"] = str(max(1, round(statement_seconds * 1000)))
        settings["max_parallel_workers_per_gather"] = "0"
        command_timeout = statement_seconds + 5  # the server cancels first
    found: list[backend.Backend] = []  # detected once, on the pool's first connection

    async def init(conn: asyncpg.Connection[Record]) -> None:
        await _init_connection(conn)
        if not found:
            found.append(await backend.detect(conn))
        cast(backend.Opened, conn).backend = found[0]

    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=init,
        command_timeout=command_timeout,
        server_settings=settings,
        connection_class=backend.Opened,
    )
    assert pool is not None
    return pool


async def backend_of(pool: Pool) -> backend.Backend:
    """The backend the pool's connections talk to."""
    async with pool.acquire() as conn:
        return backend.dialect(conn)


async def connect(url: str) -> backend.Opened:
    conn = await asyncpg.connect(
        url,
        server_settings={"application_name": "vidmetrics"},
        connection_class=backend.Opened,
    )
    await _init_connection(conn)
    conn.backend = await backend.detect(conn)
    return conn


async def ping(pool: Pool, timeout: float) -> None:
    """Raise unless the database answers within `timeout` seconds."""
    async with pool.acquire(timeout=timeout) as conn:
        await conn.fetchval("SELECT 1")

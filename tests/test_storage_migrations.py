"""The real Alembic migrations: up, down, up again, and no drift from tables.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.storage import db, timescale
from app.storage.embedded import EmbeddedPostgres
from app.storage.tables import metadata


async def _tables(url: str) -> set[str]:
    conn = await db.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}
    finally:
        await conn.close()


async def _diff(url: str) -> list[object]:
    engine = create_async_engine(db.sqlalchemy_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            def compare(sync_conn):  # type: ignore[no-untyped-def]
                ctx = MigrationContext.configure(sync_conn)
                return compare_metadata(ctx, metadata)
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


def test_up_down_up_and_no_drift(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "m")
    pg.acquire()
    url = pg.start()
    try:
        db.migrate(url)
        db.migrate(url)  # idempotent
        tables = asyncio.run(_tables(url))
        assert {"ingest_keys", "videos", "sessions", "watch_intervals", "events",
                "playing", "alembic_version"} <= tables
        assert asyncio.run(_diff(url)) == []
        db.downgrade(url, "base")
        assert asyncio.run(_tables(url)) == {"alembic_version"}
        db.migrate(url)
        assert asyncio.run(_diff(url)) == []
    finally:
        pg.stop()
        pg.release()


def test_timescale_sql_files_parse_into_statements() -> None:
    for name in (*timescale.SCHEMA_FILES, "policies.sql"):
        statements = timescale.statements(timescale.SQL_DIR / name)
        assert statements and all(not s.startswith("--") for s in statements)
    hyper = timescale.statements(timescale.SQL_DIR / "001_hypertables.sql")
    assert sum("create_hypertable" in s for s in hyper) == 3

"""The real Alembic migrations: up, down, up again, and no drift from tables.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.storage import db, timescale
from app.storage.tables import metadata
from tests.conftest import private_postgres, query


def _tables(url: str) -> set[str]:
    rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


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
    with private_postgres(tmp_path / "m") as url:
        db.migrate(url)
        db.migrate(url)  # idempotent
        tables = _tables(url)
        assert {"ingest_keys", "videos", "sessions", "watch_intervals", "events",
                "playing", "alembic_version"} <= tables
        assert asyncio.run(_diff(url)) == []
        db.downgrade(url, "base")
        assert _tables(url) == {"alembic_version"}
        db.migrate(url)
        assert asyncio.run(_diff(url)) == []


def test_timescale_sql_files_parse_into_statements() -> None:
    for name in (*timescale.SCHEMA_FILES, "policies.sql"):
        statements = timescale.statements(timescale.SQL_DIR / name)
        assert statements and all(not s.startswith("--") for s in statements)
    hyper = timescale.statements(timescale.SQL_DIR / "001_hypertables.sql")
    assert sum("create_hypertable" in s for s in hyper) == 3

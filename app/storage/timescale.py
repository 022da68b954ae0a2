"""TimescaleDB detection and the SQL in timescale/ that only TimescaleDB runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa

from app.resources import TIMESCALE

SQL_DIR = TIMESCALE
SCHEMA_FILES = ("001_hypertables.sql", "002_continuous_aggregates.sql")
TIMESCALE_OBJECTS = ("sessions_hourly",)


def statements(path: Path) -> list[str]:
    """Split a file of ;-terminated statements, dropping comment-only lines."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def available(bind: sa.Connection) -> bool:
    """True when the timescaledb extension is installed or can be."""
    row = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).first()
    return row is not None


def upgrade(bind: sa.Connection) -> None:
    bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
    for name in SCHEMA_FILES:
        for statement in statements(SQL_DIR / name):
            bind.exec_driver_sql(statement)


def downgrade(bind: sa.Connection) -> None:
    if is_enabled_sync(bind):
        for view in TIMESCALE_OBJECTS:
            bind.exec_driver_sql(f"DROP MATERIALIZED VIEW IF EXISTS {view}")


def is_enabled_sync(bind: sa.Connection) -> bool:
    row = bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first()
    return row is not None


async def is_enabled(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"))


def _days(days: int) -> str:
    return "NULL::interval" if days <= 0 else f"make_interval(days => {int(days)})"


async def apply_policies(conn: asyncpg.Connection, settings: Any) -> None:
    """(Re)apply compression, retention and refresh policies from settings."""
    values = {
        ":compress_after": _days(settings.compress_after_days),
        ":raw_retention": _days(settings.raw_events_retention_days),
        ":retention": _days(settings.retention_days),
    }
    for statement in statements(SQL_DIR / "policies.sql"):
        for placeholder, value in values.items():
            statement = statement.replace(placeholder, value)
        await conn.execute(statement)

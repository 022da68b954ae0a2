"""TimescaleDB detection and the SQL in timescale/ that only TimescaleDB runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from app.resources import TIMESCALE
from app.storage.driver import Connection

log = logging.getLogger("vidmetrics")

SQL_DIR = TIMESCALE
SCHEMA_FILES = ("001_hypertables.sql", "002_continuous_aggregates.sql")
TIMESCALE_OBJECTS = ("sessions_hourly",)


def statements(path: Path) -> list[str]:
    """Split a file of ;-terminated statements, dropping comment-only lines."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def available(bind: sa.Connection) -> bool:
    """True when the timescaledb extension is created, or can be: installed *and* preloaded.

    An extension that is installed but not in `shared_preload_libraries` (the state right
    after installing the OS package) cannot be created; the schema then stays plain
    PostgreSQL, and one log line says why."""
    if is_enabled_sync(bind):
        return True
    installed = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).first()
    if installed is None:
        return False
    preload = bind.execute(sa.text("SELECT current_setting('shared_preload_libraries')")).scalar()
    if "timescaledb" in [name.strip() for name in str(preload or "").split(",")]:
        return True
    log.warning(
        "TimescaleDB is installed but not preloaded (add timescaledb to "
        "shared_preload_libraries and restart PostgreSQL to use it): "
        "using plain PostgreSQL tables"
    )
    return False


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


async def is_enabled(conn: Connection) -> bool:
    """True when the schema is on TimescaleDB: the extension exists *and* the sessions
    table is a hypertable. A database migrated on plain PostgreSQL that gains the
    extension later stays plain (said once in the log): its answers are the same."""
    if not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        return False
    hyper = await conn.fetchval(
        "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'sessions'"
    )
    if not hyper:
        log.warning(
            "the timescaledb extension exists, but the vidmetrics tables were created "
            "on plain PostgreSQL: staying on plain tables (same answers)"
        )
    return bool(hyper)


def _days(days: int) -> str:
    return "NULL::interval" if days <= 0 else f"make_interval(days => {int(days)})"


async def apply_policies(conn: Connection, settings: Any) -> None:
    """(Re)apply compression, retention and refresh policies from settings."""
    values = {
        ":compress_after": _days(settings.compress_after_days),
        ":retention": _days(settings.retention_days),
    }
    for statement in statements(SQL_DIR / "policies.sql"):
        for placeholder, value in values.items():
            statement = statement.replace(placeholder, value)
        await conn.execute(statement)

"""TimescaleDB-only checks; they run when TEST_DATABASE_URL points at a TimescaleDB."""

from __future__ import annotations

import asyncpg
import pytest

from app.settings import Settings
from app.storage import timescale


@pytest.fixture
async def ts(conn: asyncpg.Connection) -> asyncpg.Connection:
    if not await timescale.is_enabled(conn):
        pytest.skip("TEST_DATABASE_URL does not point at a TimescaleDB")
    return conn


async def test_hypertables_and_continuous_aggregate(ts: asyncpg.Connection) -> None:
    names = {r[0] for r in await ts.fetch(
        "SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert {"sessions", "watch_intervals", "events"} <= names
    caggs = {r[0] for r in await ts.fetch(
        "SELECT view_name FROM timescaledb_information.continuous_aggregates")}
    assert "sessions_hourly" in caggs


async def test_policies_are_applied_from_settings(ts: asyncpg.Connection) -> None:
    await timescale.apply_policies(ts, Settings(retention_days=400, raw_events_retention_days=30))
    jobs = await ts.fetch("SELECT proc_name, hypertable_name FROM timescaledb_information.jobs")
    kinds = {(r["proc_name"], r["hypertable_name"]) for r in jobs}
    assert ("policy_compression", "sessions") in kinds
    assert ("policy_retention", "events") in kinds
    assert ("policy_retention", "sessions") in kinds
    await timescale.apply_policies(ts, Settings(retention_days=0))  # idempotent, and removable
    jobs = await ts.fetch("SELECT proc_name, hypertable_name FROM timescaledb_information.jobs")
    assert ("policy_retention", "sessions") not in {(r[0], r[1]) for r in jobs}

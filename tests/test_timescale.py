"""TimescaleDB: hypertables, aggregates, policies, detection and fallbacks, on a real
TimescaleDB (a throwaway cluster from ../shared/timescaledb, or TEST_TIMESCALE_URL).
Without one these tests skip, saying why."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from app.ingest.writer import WriteFailed, Writer
from app.model.rows import SessionRow, VideoRef
from app.settings import Settings
from app.storage import db, key_store, timescale
from app.storage.backend import Backend
from app.storage.session_store import copy_rows, ensure_videos
from tests.conftest import SHARED_TIMESCALE, start_server, timescale_cluster


@pytest.fixture
async def ts(timescale_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await db.connect(timescale_url)
    try:
        yield conn
    finally:
        await conn.close()


async def test_hypertables_and_continuous_aggregate(ts: asyncpg.Connection) -> None:
    assert await timescale.is_enabled(ts)
    assert ts.backend is Backend.TIMESCALEDB  # what the SQL is assembled for
    names = {
        r[0]
        for r in await ts.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
    }
    assert {"sessions", "impressions"} <= names
    caggs = {
        r[0]
        for r in await ts.fetch(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates"
        )
    }
    assert "sessions_hourly" in caggs


async def test_policies_are_applied_from_settings(ts: asyncpg.Connection) -> None:
    await timescale.apply_policies(ts, Settings(retention_days=400, raw_events_retention_days=30))
    jobs = await ts.fetch("SELECT proc_name, hypertable_name FROM timescaledb_information.jobs")
    kinds = {(r["proc_name"], r["hypertable_name"]) for r in jobs}
    assert ("policy_compression", "sessions") in kinds
    assert ("policy_retention", "sessions") in kinds
    assert ("policy_retention", "impressions") in kinds
    await timescale.apply_policies(ts, Settings(retention_days=0))  # idempotent, and removable
    jobs = await ts.fetch("SELECT proc_name, hypertable_name FROM timescaledb_information.jobs")
    assert ("policy_retention", "sessions") not in {(r[0], r[1]) for r in jobs}


async def test_aggregate_refresh_covers_backfilled_sessions(ts: asyncpg.Connection) -> None:
    """The refresh policy has no start offset, so sessions older than any window count."""
    await timescale.apply_policies(ts, Settings())
    job = await ts.fetchval(
        "SELECT job_id FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_refresh_continuous_aggregate'"
    )
    config = await ts.fetchval(
        "SELECT config FROM timescaledb_information.jobs WHERE job_id = $1", job
    )
    assert config["start_offset"] is None
    await ts.execute("INSERT INTO ingest_keys (key) VALUES ('ts-backfill') ON CONFLICT DO NOTHING")
    ref = VideoRef.of("ts-backfill", None, {"video_id": "old"})
    ids = await ensure_videos(ts, [ref])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    rows = [
        SessionRow(
            10**14 + i,
            start + dt.timedelta(minutes=i),
            ref,
            "chrome",
            "mac",
            "desktop",
            None,
            None,
            watch_seconds=5.0,
        )
        for i in range(50)
    ]
    await copy_rows(ts, ids, rows, [], [])
    await ts.execute(f"CALL run_job({job})")
    total = await ts.fetchval(
        "SELECT sum(sessions) FROM sessions_hourly WHERE video_id = $1",
        ids[(ref.key, ref.identity)],
    )
    assert total == 50


def test_installed_but_not_preloaded_falls_back_to_plain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with timescale_cluster(tmp_path, preload=False) as url:
        with caplog.at_level(logging.WARNING, logger="vidmetrics"):
            db.migrate(url)
        assert any("not preloaded" in r.getMessage() for r in caplog.records)

        async def check() -> None:
            conn = await db.connect(url)
            try:
                assert not await timescale.is_enabled(conn)
                assert conn.backend is Backend.POSTGRESQL
                assert await conn.fetchval("SELECT count(*) FROM sessions") == 0
            finally:
                await conn.close()

        asyncio.run(check())


async def test_plain_schema_that_gains_the_extension_stays_plain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with timescale_cluster(tmp_path, preload=False) as url:
        await asyncio.to_thread(db.migrate, url)  # plain tables
        # later the server preloads the extension and it is created in the database
        # (as images that create it in every database do)
        conn = await db.connect(url)
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'timescaledb'")
        await conn.close()
        cluster, data = SHARED_TIMESCALE / "cluster.sh", tmp_path / "cluster"
        port = url.rsplit(":", 1)[1].split("/")[0]
        subprocess.run(["bash", str(cluster), "stop", str(data)], check=True, timeout=60)
        subprocess.run(
            ["bash", str(cluster), "start", str(data), port],
            check=True,
            capture_output=True,
            timeout=120,
        )
        conn = await db.connect(url)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            with caplog.at_level(logging.WARNING, logger="vidmetrics"):
                assert not await timescale.is_enabled(conn)
            assert any("staying on plain tables" in r.getMessage() for r in caplog.records)
        finally:
            await conn.close()
        await asyncio.to_thread(db.migrate, url)  # a no-op, not an error
        (tmp_path / "srv").mkdir()
        srv = start_server(tmp_path / "srv", {"DATABASE_URL": url})
        try:
            assert "staying on plain tables" in srv.output()
        finally:
            assert srv.stop() == 0


async def test_a_late_write_into_a_compressed_chunk_harms_no_other_client(
    timescale_url: str, ts: asyncpg.Connection
) -> None:
    """A page left open past METRICS_COMPRESS_AFTER_DAYS writes to a session whose row is
    in a compressed chunk, which TimescaleDB refuses to lock for the read-back: that
    client's event is refused, and the others in the same batch are still committed."""
    key = "late-" + secrets.token_hex(4)
    await key_store.insert_key(ts, key)
    pool = await db.create_pool(timescale_url, min_size=2, max_size=2)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ref = VideoRef.of(key, None, {"video_id": "old"})
    try:
        first = Writer(pool, flush_interval=0.001, max_rows=100)
        first.start()
        old = SessionRow(
            await first.new_session_id(),
            now - dt.timedelta(days=30),
            ref,
            "chrome",
            "mac",
            "desktop",
            None,
            None,
            duration=60.0,
        )
        await first.write([old])
        await first.stop()
        compressed = await ts.fetchval(
            "SELECT count(compress_chunk(c, if_not_compressed => true)) "
            "FROM show_chunks('sessions', older_than => interval '7 days') c"
        )
        assert compressed >= 1
        # a writer that has not cached the old session reads it back (as after a restart)
        writer = Writer(pool, flush_interval=0.2, max_rows=1000)  # both in one batch
        writer.start()
        later = dataclasses.replace(old, watch_seconds=5.0, furthest=5.0)
        fresh = SessionRow(
            await writer.new_session_id(),
            now,
            ref,
            "chrome",
            "mac",
            "desktop",
            None,
            None,
            duration=60.0,
        )
        results = await asyncio.wait_for(
            asyncio.gather(writer.write([later]), writer.write([fresh]), return_exceptions=True),
            30,
        )
        # a new session alone, after the refusal: written on the first try
        alone = SessionRow(
            await writer.new_session_id(), now, ref, "chrome", "mac", "desktop", None, None
        )
        await asyncio.wait_for(writer.write([alone]), 30)
        await writer.stop()
        assert isinstance(results[0], WriteFailed)
        assert "refused by the database" in str(results[0])
        assert results[1] is None  # the other client's event is committed
        assert await ts.fetchval("SELECT count(*) FROM sessions WHERE id = $1", fresh.id) == 1
        assert writer.healthy  # a refused value is not an outage
    finally:
        await pool.close()

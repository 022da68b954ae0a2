"""Questions never starve ingest: the query API has its own few connections, each statement
bounded in time. A question over its budget is a 504 JSON error naming the limit, one
that finds every query connection busy a 503 — and a socket beside them keeps being
acknowledged, and /healthz stays ok, all the while."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.storage import db
from tests.conftest import AUTH, Server, start_server
from tests.phx import Phx, join_payload
from tests.test_ingest_socket import new_key, topic

BUDGET = 0.5  # seconds a statement of a question may run here


@pytest.fixture
async def budget_server(tmp_path: Path, database_url: str) -> AsyncIterator[Server]:
    srv = start_server(
        tmp_path,
        {
            "DATABASE_URL": database_url,
            "METRICS_QUERY_TIMEOUT_SECONDS": str(BUDGET),
            "METRICS_QUERY_POOL_SIZE": "1",
            "METRICS_QUERY_QUEUE_SECONDS": "0.3",
        },
    )
    try:
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in srv.output()


async def _acked_while(phx: Phx, t: str, seconds: float) -> list[float]:
    """Send play/pause for `seconds`; every reply must be ok; the ack times in seconds."""
    latencies, position, deadline = [], 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        position += 0.2
        name, field = ("play", "from") if len(latencies) % 2 == 0 else ("pause", "to")
        sent = time.perf_counter()
        reply = await phx.event(t, name=name, duration=600, **{field: round(position, 2)})
        assert reply["status"] == "ok", reply
        latencies.append(time.perf_counter() - sent)
        await asyncio.sleep(0.1)
    return latencies


async def test_a_question_over_budget_is_504_while_a_socket_is_acknowledged(
    budget_server: Server, database_url: str
) -> None:
    server = budget_server
    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    assert (await phx.join(t, join_payload(key, video_id="budget")))["status"] == "ok"
    assert (await phx.event(t, name="play", duration=600, **{"from": 0}))["status"] == "ok"
    # a statement of a question that cannot finish in time: the keys listing waits on a
    # lock this test holds (a lock the writer never needs once the video exists)
    blocker = await db.connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE ingest_keys IN ACCESS EXCLUSIVE MODE")
            async with httpx.AsyncClient(base_url=server.http, auth=AUTH, timeout=30) as api:
                slow = asyncio.create_task(api.get("/api/v1/keys"))
                await asyncio.sleep(0.1)  # it holds the one query connection now
                busy = await api.post("/api/v1/plays", json={"query": {"key": key}})
                acks = await _acked_while(phx, t, 1.0)
                health = await api.get("/healthz")
                timed_out = await slow
        assert timed_out.status_code == 504, timed_out.text
        assert "METRICS_QUERY_TIMEOUT_SECONDS" in timed_out.json()["error"]
        assert busy.status_code == 503, busy.text
        assert "METRICS_QUERY_POOL_SIZE" in busy.json()["error"]
        assert busy.headers["retry-after"] == "1"
        assert health.status_code == 200, health.text
        assert len(acks) >= 4 and max(acks) < BUDGET, acks  # never behind the question
        # the budget is per statement: once the lock is gone, questions are answered
        async with httpx.AsyncClient(base_url=server.http, auth=AUTH, timeout=30) as api:
            assert (await api.get("/api/v1/keys")).status_code == 200
            plays = await api.post(
                "/api/v1/plays", json={"query": {"key": key}, "minimum_watch_seconds": 0}
            )
            assert plays.status_code == 200, plays.text
    finally:
        await blocker.close()
        await phx.close()


async def test_query_connections_run_without_parallel_workers(
    budget_server: Server, database_url: str
) -> None:
    """The query pool's sessions as PostgreSQL sees them: their own application name, a
    statement timeout, no parallel workers (a raw scan takes one core, not every core)."""
    async with httpx.AsyncClient(base_url=budget_server.http, auth=AUTH) as api:
        assert (await api.get("/api/v1/keys")).status_code == 200
    conn: asyncpg.Connection = await db.connect(database_url)
    try:
        pool = await db.create_pool(database_url, max_size=1, statement_seconds=BUDGET)
        try:
            async with pool.acquire() as c:
                assert await c.fetchval("SHOW statement_timeout") == "500ms"
                assert await c.fetchval("SHOW max_parallel_workers_per_gather") == "0"
                assert await c.fetchval("SHOW application_name") == "vidmetrics-query"
        finally:
            await pool.close()
        names = {
            r[0]
            for r in await conn.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE "
                "'vidmetrics%'"
            )
        }
        assert {"vidmetrics", "vidmetrics-query"} <= names, names
    finally:
        await conn.close()

"""The websocket ingest path against a real server process and the real database."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from app.storage.embedded import EmbeddedPostgres
from tests.conftest import AUTH, Server, islands_of, start_server, timeline_of
from tests.phx import BOT_UA, IPHONE_UA, Phx, join_payload


def new_key(server: Server) -> str:
    response = httpx.post(f"{server.http}/api/v1/keys", auth=AUTH, json={})
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def topic() -> str:
    return "session:" + secrets.token_urlsafe(16)[:21]


async def sessions_for(conn: asyncpg.Connection, key: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT s.* FROM sessions s JOIN videos v ON v.id = s.video_id WHERE v.key = $1 "
        "ORDER BY s.started_at",
        key,
    )


async def wait_for(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_heartbeat(server: Server) -> None:
    phx = await Phx.open(server.ws())
    reply = await phx.push("phoenix", "heartbeat", {})
    assert reply == [None, reply[1], "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    await phx.close()


async def test_join_ok_and_refusals(server: Server) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    assert await phx.join(topic(), join_payload(key)) == {"status": "ok", "response": {}}
    bad = await phx.join(topic(), join_payload("not-a-key"))
    assert bad == {"status": "error", "response": {"reason": "invalid key"}}
    missing = await phx.join(topic(), {"source_url": "http://x/"})
    assert missing["status"] == "error"
    assert "key" in missing["response"]["reason"]
    assert "metadata" in missing["response"]["reason"]
    not_object = await phx.join(topic(), {"key": key, "metadata": [1, 2]})
    assert not_object["response"]["reason"] == "metadata must be an object"
    deep = await phx.join(topic(), {"key": key, "metadata": {"a": {"b": {"c": {"d": {"e": 1}}}}}})
    assert "nested deeper" in deep["response"]["reason"]
    big = await phx.join(topic(), {"key": key, "metadata": {"x": "y" * 10000}})
    assert "larger than" in big["response"]["reason"]
    bad_topic = await phx.join("room:lobby", join_payload(key))
    assert bad_topic["response"]["reason"] == "unmatched topic"
    # the socket survived every refusal
    assert (await phx.push("phoenix", "heartbeat", {}))[4]["status"] == "ok"
    await phx.close()


async def test_revoked_key_is_refused(server: Server, conn: asyncpg.Connection) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    assert (await phx.join(t, join_payload(key)))["status"] == "ok"
    assert (await phx.event(t, name="play", duration=20, **{"from": 0}))["status"] == "ok"
    assert (await phx.event(t, name="pause", duration=20, to="3.5"))["status"] == "ok"
    from urllib.parse import quote

    revoke = httpx.delete(f"{server.http}/api/v1/keys/{quote(key, safe='')}", auth=AUTH)
    assert revoke.status_code == 200
    assert (await phx.join(topic(), join_payload(key)))["response"]["reason"] == "invalid key"
    await phx.close()
    rows = await sessions_for(conn, key)
    assert len(rows) == 1 and rows[0]["watch_seconds"] == pytest.approx(3.5)


async def test_bot_user_agent_is_refused_and_nothing_stored(
    server: Server, conn: asyncpg.Connection
) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws(), user_agent=BOT_UA)
    reply = await phx.join(topic(), join_payload(key))
    assert reply["status"] == "error" and "bot" in reply["response"]["reason"]
    await phx.close()
    assert await sessions_for(conn, key) == []


async def test_unmatched_topic_and_unknown_events(server: Server) -> None:
    phx = await Phx.open(server.ws())
    reply = await phx.push("session:nope", "event", {"name": "play"})
    assert reply[0] is None
    assert reply[4] == {"status": "error", "response": {"reason": "unmatched topic"}}
    key = new_key(server)
    t = topic()
    await phx.join(t, join_payload(key))
    assert (await phx.event(t, name="explode"))["response"]["reason"].startswith("unknown event")
    assert (await phx.event(t, name="play", **{"from": "abc"}))["response"][
        "reason"
    ] == "from must be a number"
    other = await phx.push(t, "shout", {})
    assert other[4]["status"] == "error"
    await phx.close()


async def test_malformed_frames_never_break_the_socket(server: Server) -> None:
    phx = await Phx.open(server.ws())
    for raw in [
        "not json",
        "[1,2,3]",
        '{"a":1}',
        '[null,"9",5,"x",{}]',
        '[null,"8","t","e",[]]',
        "[]",
        "null",
        "1e999",
        '["x","y","z","w","v"]',
    ]:
        await phx.send_raw(raw)
        frame = await phx.recv()
        assert frame[3] == "phx_reply" and frame[4]["status"] == "error", raw
    await phx.send_raw(b"\x00\x01binary")
    frame = await phx.recv()
    assert frame[4]["response"]["reason"] == "binary frames are not supported"
    assert (await phx.push("phoenix", "heartbeat", {}))[4]["status"] == "ok"
    await phx.close()


async def test_oversized_frame_closes_with_1009(server: Server) -> None:
    phx = await Phx.open(server.ws())
    await phx.send_raw(json.dumps([None, "1", "phoenix", "heartbeat", {"x": "y" * 200_000}]))
    with pytest.raises(ConnectionClosed) as info:
        await phx.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    # other clients are unaffected
    other = await Phx.open(server.ws())
    assert (await other.push("phoenix", "heartbeat", {}))[4]["status"] == "ok"
    await other.close()


async def test_vsn1_object_framing(server: Server) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws(vsn="1.0.0"))
    await phx.send_raw(
        json.dumps(
            {
                "topic": "session:v1",
                "event": "phx_join",
                "ref": "1",
                "payload": {
                    "identifier": "legacy-video",
                    "key": key,
                    "metadata": {"title": "Legacy"},
                    "session_data": {"plan": "pro"},
                    "source_url": "http://legacy.example/a?b=c",
                },
            }
        )
    )
    reply = json.loads(await phx.ws.recv())
    assert reply == {
        "join_ref": None,
        "ref": "1",
        "topic": "session:v1",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {}},
    }
    await phx.close()


async def test_play_pause_play_and_disconnect(server: Server, conn: asyncpg.Connection) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws(), user_agent=IPHONE_UA)
    t = topic()
    assert (await phx.join(t, join_payload(key, url="https://shop.example/p/1?utm=x#top")))[
        "status"
    ] == "ok"
    assert (await phx.event(t, name="play", duration=20, **{"from": 0}))["status"] == "ok"
    assert (await phx.event(t, name="pause", duration=20, to="6.01"))["status"] == "ok"
    assert (await phx.event(t, name="play", duration=20, **{"from": "12.00"}))["status"] == "ok"
    assert (await phx.event(t, name="pause", duration=20, to=15.5))["status"] == "ok"
    # a jump while playing: pause with the last position, then play from the new one
    assert (await phx.event(t, name="play", duration=20, **{"from": 2}))["status"] == "ok"
    await asyncio.sleep(0.6)
    await phx.close()  # closing the page sends nothing: the server closes the interval
    rows = await wait_for(lambda: _ended(conn, key))
    row = rows[0]
    assert (row["browser"], row["platform"], row["device"]) == ("safari", "ios", "mobile")
    assert row["page"] == "https://shop.example/p/1"
    assert row["duration"] == 20
    # watched 0-6.01, 12-15.5, then 2 to ~3 (inside the first range: merged into it)
    assert await islands_of(conn, row["id"]) == [(0.0, 6.01), (12.0, 15.5)]
    assert 6.01 + 3.5 + 0.4 < row["watch_seconds"] < 6.01 + 3.5 + 2.0
    events = await timeline_of(conn, row["id"])
    assert [name for _, name, _ in events] == ["play", "pause", "play", "pause", "play"]
    assert [payload for _, _, payload in events] == [
        {"duration": 20.0, "from": 0.0},
        {"duration": 20.0, "to": 6.01},
        {"duration": 20.0, "from": 12.0},
        {"duration": 20.0, "to": 15.5},
        {"duration": 20.0, "from": 2.0},
    ]
    assert (
        all(a <= b for (a, _, _), (b, _, _) in zip(events, events[1:], strict=False))
        and events[0][0] == row["started_at"]
    )


async def _ended(conn: asyncpg.Connection, key: str) -> list[asyncpg.Record] | None:
    # the third interval closes with the final snapshot (one commit): watch time past
    # the first two intervals' 9.51 s
    rows = await sessions_for(conn, key)
    if rows and rows[0]["watch_seconds"] > 6.01 + 3.5:
        return rows
    return None


async def test_page_that_never_plays_is_not_a_session(
    server: Server, conn: asyncpg.Connection
) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    await phx.join(t, join_payload(key))
    assert (await phx.event(t, name="durationchange", duration=30))["status"] == "ok"
    assert (await phx.push(t, "phx_leave", {}))[4]["status"] == "ok"
    close = await phx.recv()
    assert close[3] == "phx_close" and close[2] == t
    await phx.close()
    await asyncio.sleep(0.2)
    assert await sessions_for(conn, key) == []


async def test_several_channels_and_leave(server: Server, conn: asyncpg.Connection) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    a, b = topic(), topic()
    await phx.join(a, join_payload(key, video_id="one"))
    await phx.join(b, join_payload(key, video_id="two"))
    assert (await phx.event(a, name="play", **{"from": 0}))["status"] == "ok"
    assert (await phx.event(b, name="play", **{"from": 0}))["status"] == "ok"
    assert (await phx.event(a, name="explode"))["status"] == "error"  # a's error ...
    assert (await phx.event(b, name="pause", to=4))["status"] == "ok"  # ... leaves b alone
    assert (await phx.push(a, "phx_leave", {}))[4]["status"] == "ok"
    # after leaving, a's pushes are unmatched while b still works
    assert (await phx.event(a, name="pause", to=1))["response"]["reason"] == "unmatched topic"
    assert (await phx.event(b, name="play", **{"from": 4}))["status"] == "ok"
    await phx.close()
    rows = await wait_for(lambda: _count(conn, key, 2))
    assert {r["video_id"] for r in rows} and len({r["video_id"] for r in rows}) == 2


async def _count(conn: asyncpg.Connection, key: str, n: int) -> list[asyncpg.Record] | None:
    rows = await sessions_for(conn, key)
    return rows if len(rows) == n and all(r["ended_at"] for r in rows) else None


async def test_rate_limit(tmp_path: Path, database_url: str) -> None:
    srv = start_server(
        tmp_path, {"DATABASE_URL": database_url, "METRICS_MAX_EVENTS_PER_SECOND": "2"}
    )
    try:
        key = new_key(srv)
        phx = await Phx.open(srv.ws())
        t = topic()
        await phx.join(t, join_payload(key))
        replies = [await phx.event(t, name="volumechange") for _ in range(8)]
        reasons = [r["response"].get("reason") for r in replies]
        assert "rate limit exceeded" in reasons
        assert replies[0]["status"] == "ok"
        assert (await phx.push("phoenix", "heartbeat", {}))[4]["status"] == "ok"
        other = await Phx.open(srv.ws())  # a second client is unaffected
        t2 = topic()
        await other.join(t2, join_payload(key))
        assert (await other.event(t2, name="volumechange"))["status"] == "ok"
        metrics = httpx.get(f"{srv.http}/metrics", auth=AUTH).text
        assert 'vidmetrics_refused_total{reason="rate_limit"}' in metrics
    finally:
        srv.stop()


async def test_database_outage_gives_errors_then_recovers(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {})  # its own embedded database, which we take down
    pg = EmbeddedPostgres(tmp_path / "data")
    try:
        key = new_key(srv)
        phx = await Phx.open(srv.ws())
        t = topic()
        await phx.join(t, join_payload(key))
        assert (await phx.event(t, name="play", **{"from": 0}))["status"] == "ok"
        pg.stop()
        reply = await phx.event(t, name="pause", to=2)
        assert reply == {"status": "error", "response": {"reason": "database unavailable"}}
        assert (await phx.push("phoenix", "heartbeat", {}))[4]["status"] == "ok"
        health = httpx.get(f"{srv.http}/healthz", timeout=10)
        assert health.status_code == 503
        assert health.json()["database"] == "unavailable"
        assert health.json()["writer"] == "failing"
        # a question meanwhile: a clear 503 naming the database, never a 500
        asked = httpx.post(
            f"{srv.http}/api/v1/plays",
            json={"query": {"key": key}, "timeframe": "1 day"},
            auth=AUTH,
            timeout=30,
        )
        assert asked.status_code == 503, asked.text
        assert asked.json() == {"error": "the database is unavailable; retry in a moment"}
        assert asked.headers["retry-after"] == "1"
        pg.start()

        async def recovered() -> bool:
            r = await phx.event(t, name="play", **{"from": 2})
            return r["status"] == "ok"

        await wait_for(recovered, timeout=20)
        health = httpx.get(f"{srv.http}/healthz", timeout=10)
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "database": "ok", "writer": "ok"}
        assert (await phx.event(t, name="pause", to=5))["status"] == "ok"
        await phx.close()
    finally:
        srv.stop()


async def test_sigterm_flushes_open_sessions(
    tmp_path: Path, database_url: str, conn: asyncpg.Connection
) -> None:
    srv = start_server(tmp_path, {"DATABASE_URL": database_url})
    key = new_key(srv)
    phx = await Phx.open(srv.ws())
    t = topic()
    await phx.join(t, join_payload(key))
    assert (await phx.event(t, name="play", duration=60, **{"from": 10}))["status"] == "ok"
    await asyncio.sleep(1.0)
    assert srv.stop(signal.SIGTERM) == 0
    rows = await sessions_for(conn, key)
    assert len(rows) == 1
    ivs = await islands_of(conn, rows[0]["id"])
    assert len(ivs) == 1 and ivs[0][0] == 10.0 and 10.9 < ivs[0][1] < 13
    assert rows[0]["watch_seconds"] == pytest.approx(ivs[0][1] - 10.0)
    # no longer watching (a stopped session's presence row is dated -infinity)
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM playing WHERE session_id = $1 AND last_seen > '-infinity'",
            rows[0]["id"],
        )
        == 0
    )


async def test_max_sockets(tmp_path: Path, database_url: str) -> None:
    srv = start_server(tmp_path, {"DATABASE_URL": database_url, "METRICS_MAX_SOCKETS": "2"})
    try:
        first, second = await Phx.open(srv.ws()), await Phx.open(srv.ws())
        with pytest.raises(Exception) as info:  # refused at the handshake
            third = await Phx.open(srv.ws())
            await third.recv()
        assert "1013" in str(info.value) or "403" in str(info.value)
        assert (await first.push("phoenix", "heartbeat", {}))[4]["status"] == "ok"
        await second.close()
        await asyncio.sleep(0.2)
        again = await Phx.open(srv.ws())  # a freed slot is usable again
        assert (await again.push("phoenix", "heartbeat", {}))[4]["status"] == "ok"
        await again.close()
        await first.close()
    finally:
        srv.stop()


async def test_two_processes_share_revocation_and_presence(
    tmp_path: Path, server: Server, database_url: str
) -> None:
    other = start_server(
        tmp_path, {"DATABASE_URL": database_url, "METRICS_KEY_REFRESH_SECONDS": "0.5"}
    )
    try:
        key = new_key(server)
        await asyncio.sleep(1.2)  # the other process learns the new key by polling
        phx = await Phx.open(other.ws())
        t = topic()
        assert (await phx.join(t, join_payload(key)))["status"] == "ok"
        assert (await phx.event(t, name="play", **{"from": 0}))["status"] == "ok"
        watching = httpx.post(
            f"{server.http}/api/v1/watching", auth=AUTH, json={"query": {"key": key}}
        ).json()
        assert watching == {"watching": 1}  # played on one process, seen from the other
        from urllib.parse import quote

        assert (
            httpx.delete(f"{server.http}/api/v1/keys/{quote(key, safe='')}", auth=AUTH).status_code
            == 200
        )
        await asyncio.sleep(1.0)
        refused = await phx.join(topic(), join_payload(key))
        assert refused == {"status": "error", "response": {"reason": "invalid key"}}
        await phx.close()
    finally:
        other.stop()


async def test_a_long_timeline_spills_into_overflow_rows(
    server: Server, conn: asyncpg.Connection, database_url: str
) -> None:
    """A session's row keeps its first raw events up to timeline.ROW_BYTES; the rest go to
    overflow rows (an append never rewrites a long value). The timeline reads back whole and
    in order, the count is exact, and raw-event retention drops both."""
    import datetime as dt

    from app.storage import db, session_store, timeline

    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    assert (await phx.join(t, join_payload(key)))["status"] == "ok"
    sent = []
    for n in range(80):  # 160 events of 24 bytes: ~3.8 KB
        for step in (0, 1):
            assert (
                await phx.event(
                    t,
                    name=("play", "pause")[step],
                    duration=600,
                    **{("from", "to")[step]: n + step},
                )
            )["status"] == "ok"
            sent.append((("play", "pause")[step], float(n + step)))
            await asyncio.sleep(0.012)  # under the rate limit (50/s, burst 100), acks or not
    await phx.close()
    (row,) = await wait_for(lambda: _ended_row(conn, key))
    events = await timeline_of(conn, row["id"])
    assert [(name, payload.get("from", payload.get("to"))) for _, name, payload in events] == sent
    assert all(a <= b for (a, _, _), (b, _, _) in zip(events, events[1:], strict=False))
    assert row["event_count"] == len(sent)
    assert len(row["events"]) <= timeline.ROW_BYTES
    overflow = await conn.fetchval(
        "SELECT count(*) FROM session_events WHERE session_id = $1", row["id"]
    )
    assert overflow >= 1
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        later = row["started_at"] + dt.timedelta(days=31)
        assert await session_store.drop_raw_events(pool, 30, now=later) >= 1
    finally:
        await pool.close()
    assert await timeline_of(conn, row["id"]) == []
    assert (
        await conn.fetchval("SELECT count(*) FROM session_events WHERE session_id = $1", row["id"])
        == 0
    )


async def _ended_row(conn: asyncpg.Connection, key: str) -> list[asyncpg.Record] | None:
    rows = await sessions_for(conn, key)
    return (
        rows if rows and rows[0]["ended_at"] is not None and rows[0]["event_count"] >= 160 else None
    )

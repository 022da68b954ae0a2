"""Quality of experience over a hand-computed scenario played through real sockets: every
/api/v1/qoe formula pinned, the QoE summary of /sessions, and that sessions from clients
without QoE (the unmodified @maveio/metrics) stay out of every denominator."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from typing import Any

import asyncpg
import httpx
import pytest

from app.model import quantiles
from tests.conftest import AUTH, Server
from tests.phx import IPHONE_UA, Phx, join_payload
from tests.test_ingest_socket import new_key, sessions_for, topic

DURATION = 100


async def _viewer(
    server: Server, key: str, pushes: list[dict[str, Any]], user_agent: str | None = None
) -> None:
    phx = await (Phx.open(server.ws(), user_agent) if user_agent else Phx.open(server.ws()))
    t = topic()
    assert (await phx.join(t, join_payload(key, video_id="qoe")))["status"] == "ok"
    for push in pushes:
        if "sleep" in push:
            await asyncio.sleep(float(push["sleep"]))
            continue
        reply = await phx.event(t, duration=DURATION, **push)
        assert reply["status"] == "ok", (push, reply)
    await phx.close()


def _rep(ms: float) -> float:
    """What the histogram reports for a sample of `ms`."""
    return round(quantiles.representative(quantiles.index(ms)), 1)


async def _scenario(server: Server, key: str) -> None:
    await asyncio.gather(
        # 1: starts in 800 ms, one 2 s stall, watches 9 s, one 300 ms seek, exits cleanly
        _viewer(
            server,
            key,
            [
                {"name": "play_request"},
                {"name": "first_frame", "ms": 800},
                {"name": "play", "from": 0},
                {"name": "rebuffering_start"},
                {"name": "rebuffering_end", "ms": 2000},
                {"name": "pause", "to": 9},
                {"name": "seeking"},
                {"name": "seeked", "ms": 300},
                {"name": "exit"},
            ],
        ),
        # 2: starts in 1.5 s, watches 6 s, two seeks (100 + 700 ms: 400 ms mean), tab closed
        _viewer(
            server,
            key,
            [
                {"name": "play_request"},
                {"name": "first_frame", "ms": 1500},
                {"name": "play", "from": 0},
                {"name": "pause", "to": 6},
                {"name": "seeking"},
                {"name": "seeked", "ms": 100},
                {"name": "seeking"},
                {"name": "seeked", "ms": 700},
            ],
        ),
        # 3 (iPhone): starts in 3 s, watches 3 s, then a fatal network error
        _viewer(
            server,
            key,
            [
                {"name": "play_request"},
                {"sleep": 1.1},
                {"name": "first_frame", "ms": 3000},
                {"name": "play", "from": 0},
                {"name": "pause", "to": 3},
                {"name": "playback_failure", "code": 2},
            ],
            IPHONE_UA,
        ),
        # 4: the source is broken: fails before the first frame
        _viewer(server, key, [{"name": "play_request"}, {"name": "playback_failure", "code": 4}]),
        # 5: asks to play, leaves before anything shows: an exit before start
        _viewer(server, key, [{"name": "play_request"}, {"name": "exit"}]),
        # 6: @maveio/metrics: no QoE events at all: not in any QoE figure
        _viewer(server, key, [{"name": "play", "from": 0}, {"name": "pause", "to": 5}]),
        # 7: a 0.0.x client that reports a stall (1 s) but no startup
        _viewer(
            server,
            key,
            [
                {"name": "play", "from": 0},
                {"name": "rebuffering_start"},
                {"name": "rebuffering_end", "ms": 1000},
                {"name": "pause", "to": 4},
            ],
        ),
    )
    await asyncio.sleep(0.3)  # disconnects are written without a reply


async def test_every_qoe_formula_on_a_hand_computed_scenario(server: Server) -> None:
    key = new_key(server)
    await _scenario(server, key)
    body = {
        "query": {"key": key},
        "interval": "1 year",
        "timeframe": "1 day",
        "breakdown": "device",
    }
    answer = httpx.post(f"{server.http}/api/v1/qoe", auth=AUTH, json=body)
    assert answer.status_code == 200, answer.text
    (bucket,) = answer.json()["qoe"]
    # views with QoE data: 1, 2, 3, 4, 5, 7 (6 sent none)
    assert bucket["views"] == 6
    # startup 800, 1500, 3000 ms: nearest rank p50 = the 2nd, p95 = the 3rd
    assert bucket["startup_time_ms"] == {"p50": _rep(1500), "p95": _rep(3000), "views": 3}
    assert bucket["startup_time_ms"]["p50"] == pytest.approx(1500, rel=quantiles.RELATIVE_ERROR)
    # watched 9 + 6 + 3 + 4 = 22 s; stalled 2 + 1 = 3 s in 2 events
    assert bucket["watch_seconds"] == 22.0 and bucket["rebuffer_seconds"] == 3.0
    assert bucket["rebuffer_count"] == 2
    assert bucket["rebuffer_percentage"] == round(100 * 3 / (22 + 3), 2)  # 12.0
    assert bucket["rebuffer_frequency"] == round(2 / (22 / 60), 4)  # per minute watched
    assert bucket["playback_failure_percentage"] == round(100 * 2 / 6, 2)  # 3 and 4
    assert bucket["startup_failure_percentage"] == round(100 * 1 / 6, 2)  # 4
    assert bucket["exits_before_start_percentage"] == round(100 * 1 / 6, 2)  # 5
    # each view's mean seek latency (300, 400): nearest-rank median = 300
    assert bucket["seek_latency_ms"] == {"p50": _rep(300), "views": 2}
    # the scores (docs/api.md shows these): success 100, 100, 0, 0, — (5 left at once), 100;
    # startup 800 / 8.8, 800 / 9.5, 800 / 11; smoothness of 1, 2, 3 and 7; experience
    # 100 · mean(startup, smoothness) / 100 for 1 and 2, 0 for 3 and 4, smoothness for 7
    smooth_7 = (100 / math.sqrt(1.25) + 100 * math.exp(-10 * 1 / 5)) / 2
    assert bucket["scores"] == {
        "playback_success": 60.0,
        "startup_time": round((800 / 8.8 + 800 / 9.5 + 800 / 11) / 3, 2),
        "smoothness": round((_smooth + 100 + 100 + smooth_7) / 4, 2),
        "video_quality": None,
        "viewer_experience": round(
            ((800 / 8.8 + _smooth) / 2 + (800 / 9.5 + 100) / 2 + smooth_7) / 5, 2
        ),
    }
    assert bucket["scores"]["viewer_experience"] == 43.09  # as in docs/api.md
    mobile = bucket["breakdown"]["mobile"]
    assert mobile["views"] == 1 and mobile["playback_failure_percentage"] == 100.0
    assert mobile["startup_time_ms"]["p50"] == _rep(3000)
    assert mobile["startup_failure_percentage"] == 0.0
    assert bucket["breakdown"]["desktop"]["views"] == 5
    assert set(bucket["breakdown"]) == {"desktop", "mobile"}

    # views that never started are not plays; the plays are 1, 2, 3, 6 and 7
    plays = httpx.post(
        f"{server.http}/api/v1/plays",
        auth=AUTH,
        json={
            "query": {"key": key},
            "interval": "1 year",
            "timeframe": "1 day",
            "minimum_watch_seconds": 0,
        },
    ).json()["views"]
    assert plays[0]["views"] == 5 and plays[0]["impressions"] == 7

    # without a breakdown there is none; with a bad one, a clear 400
    plain = httpx.post(
        f"{server.http}/api/v1/qoe", auth=AUTH, json={**body, "breakdown": None}
    ).json()["qoe"][0]
    assert "breakdown" not in plain and plain["views"] == 6
    bad = httpx.post(f"{server.http}/api/v1/qoe", auth=AUTH, json={**body, "breakdown": "os"})
    assert bad.status_code == 400 and "breakdown" in bad.json()["error"]


# the first view's smoothness: one 2 s stall in 9 s watched
_smooth = (100 / math.sqrt(1 + 0.5**2) + 100 * math.exp(-10 * 2 / 11)) / 2


async def test_sessions_carry_their_qoe_summary(server: Server, conn: asyncpg.Connection) -> None:
    key = new_key(server)
    await _scenario(server, key)
    listed = httpx.post(
        f"{server.http}/api/v1/sessions",
        auth=AUTH,
        json={"query": {"key": key}, "timeframe": "1 day"},
    ).json()["sessions"]
    assert len(listed) == 7
    by_startup = {s["qoe"]["startup_ms"] if s["qoe"] else "none": s for s in listed}
    first = by_startup[800]
    assert first["played"] is True and first["qoe"] == {
        "startup_ms": 800,
        "rebuffer_count": 1,
        "rebuffer_seconds": 2.0,
        "seek_count": 1,
        "seek_latency_ms": 300,
        "failure": None,
        "failed_before_start": False,
        "exited_before_start": False,
        "upscale_max_percentage": None,  # no rendition reported
        "upscale_mean_percentage": None,
        "scores": {
            "playback_success": 100.0,
            "startup_time": round(800 / 8.8, 2),
            "smoothness": round(_smooth, 2),
            "video_quality": None,
            "viewer_experience": round((800 / 8.8 + _smooth) / 2, 2),
        },
    }
    assert by_startup[1500]["qoe"]["seek_latency_ms"] == 400
    unstarted = [s for s in listed if not s["played"]]
    assert sorted(
        (
            (s["qoe"]["failure"], s["qoe"]["failed_before_start"], s["qoe"]["exited_before_start"])
            for s in unstarted
        ),
        key=str,
    ) == [(4, True, False), (None, False, True)]
    assert sum(1 for s in listed if s["qoe"] is None) == 1  # the @maveio/metrics one
    one = httpx.get(f"{server.http}/api/v1/sessions/{first['session']}", auth=AUTH).json()
    names = [e["name"] for e in one["events"]]
    assert names == [
        "play_request",
        "first_frame",
        "play",
        "rebuffering_start",
        "rebuffering_end",
        "pause",
        "seeking",
        "seeked",
        "exit",
    ]
    assert one["events"][1]["payload"]["ms"] == 800
    assert all(e["at_ms"] >= 0 for e in one["events"])
    rows = await sessions_for(conn, key)
    assert sum(1 for r in rows if r["ended_at"] is not None) == 7


async def test_client_durations_are_checked_against_the_server_clock(
    server: Server,
    conn: asyncpg.Connection,
) -> None:
    """A claimed startup far beyond what the server saw is replaced by the server's own
    measurement; a duration that is not a number is too; QoE events cannot start twice."""
    key = new_key(server)
    await _viewer(
        server,
        key,
        [
            {"name": "play_request"},
            {"name": "first_frame", "ms": 3_600_000},
            {"name": "first_frame", "ms": 10},
            {"name": "play", "from": 0},
            {"name": "rebuffering_start"},
            {"name": "rebuffering_start"},
            {"name": "rebuffering_end", "ms": "soon"},
            {"name": "pause", "to": 1},
        ],
    )
    await asyncio.sleep(0.3)
    (row,) = await sessions_for(conn, key)
    assert row["qoe"] and row["startup_ms"] < 3000  # the server's figure, not an hour
    assert row["rebuffer_count"] == 1 and row["rebuffer_seconds"] < 3
    assert row["played"] and not row["exited_before_start"]


async def test_a_final_summary_outlives_its_raw_events(
    server: Server, conn: asyncpg.Connection, database_url: str
) -> None:
    """Once raw events pass their retention they are deleted; /sessions/{id} still answers
    the session's final summary, QoE included, and /qoe is unchanged."""
    from app.storage import db, session_store

    key = new_key(server)
    await _viewer(
        server,
        key,
        [
            {"name": "play_request"},
            {"name": "first_frame", "ms": 900},
            {"name": "play", "from": 0},
            {"name": "pause", "to": 5},
            {"name": "exit"},
        ],
    )
    await asyncio.sleep(0.3)
    (row,) = await sessions_for(conn, key)
    body = {"query": {"key": key}, "interval": "1 day", "timeframe": "1 day"}
    before = httpx.post(f"{server.http}/api/v1/qoe", auth=AUTH, json=body).json()
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        stored = "SELECT events IS NOT NULL FROM sessions WHERE id = $1"
        await session_store.drop_raw_events(pool, 30)
        assert await conn.fetchval(stored, row["id"])  # too young to go
        later = row["started_at"] + dt.timedelta(days=31)  # as if a month had passed
        assert await session_store.drop_raw_events(pool, 30, now=later) >= 1
        assert not await conn.fetchval(stored, row["id"])
    finally:
        await pool.close()
    one = httpx.get(f"{server.http}/api/v1/sessions/{row['id']}", auth=AUTH).json()
    assert one["events"] == []
    assert one["session"]["qoe"]["startup_ms"] == 900 and one["session"]["watch_seconds"] == 5
    assert httpx.post(f"{server.http}/api/v1/qoe", auth=AUTH, json=body).json() == before


def test_a_snapshot_copies_every_field() -> None:
    """SessionRow.copy lists the fields by hand (it is built for every event): a field
    added to the row and forgotten there would silently not be written."""
    import dataclasses
    import datetime as dt

    from app.storage.rollups import Qoe
    from app.storage.session_store import SessionRow, VideoRef

    row = SessionRow(
        7,
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        VideoRef.of("k", None, {}),
        "chrome",
        "mac",
        "desktop",
        "https://p.example/",
        None,
        ended_at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        duration=12.5,
        watch_seconds=3.25,
        furthest=4.0,
        ended=True,
        played=False,
        qoe=Qoe(startup_ms=10.0),
    )
    values = {f.name: getattr(row, f.name) for f in dataclasses.fields(SessionRow)}
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(SessionRow)
        if f.default is not dataclasses.MISSING
    }
    assert all(values[name] != default for name, default in defaults.items()), values
    copy = row.copy()
    assert copy is not row
    assert {f.name: getattr(copy, f.name) for f in dataclasses.fields(SessionRow)} == values


async def test_sessions_with_issues(server: Server, conn: asyncpg.Connection) -> None:
    """The session list's `issue` filter and each session's `issues`, on the scenario
    above: 1 stalled (800 ms start), 2 clean, 3 failed mid-way (3 s start), 4 failed before
    its first frame, 5 left before start, 6 no QoE, 7 stalled (no startup reported)."""
    key = new_key(server)
    await _scenario(server, key)

    def ask(**extra: Any) -> list[dict[str, Any]]:
        answer = httpx.post(
            f"{server.http}/api/v1/sessions",
            auth=AUTH,
            json={"query": {"key": key}, "timeframe": "1 day", **extra},
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json()["sessions"])

    def startups(listed: list[dict[str, Any]]) -> list[Any]:
        return sorted((s["qoe"] or {}).get("startup_ms") or 0 for s in listed)

    every = ask()
    by_issues = sorted(sorted(s["issues"]) for s in every)
    assert by_issues == [
        [],
        [],
        ["exit_before_start"],
        ["failed"],
        ["failed", "startup_failure"],
        ["stalled"],
        ["stalled"],
    ]
    assert startups(ask(issue="stalled")) == [0, 800]
    assert startups(ask(issue="failed")) == [0, 3000]
    assert [s["qoe"]["failure"] for s in ask(issue="startup_failure")] == [4]
    assert [s["played"] for s in ask(issue="exit_before_start")] == [False]
    assert ask(issue="slow_start") == []  # nobody took over 4 s
    slow = ask(issue="slow_start", slow_start_seconds=2)
    assert [s["qoe"]["startup_ms"] for s in slow] == [3000]
    assert slow[0]["issues"] == ["failed", "slow_start"]
    # pages of one issue follow the same cursor
    first = httpx.post(
        f"{server.http}/api/v1/sessions",
        auth=AUTH,
        json={"query": {"key": key}, "timeframe": "1 day", "issue": "stalled", "limit": 1},
    ).json()
    assert len(first["sessions"]) == 1 and first["next"]
    rest = ask(issue="stalled", limit=1, cursor=first["next"])
    assert len(rest) == 1 and rest[0]["session"] != first["sessions"][0]["session"]
    detail = httpx.get(f"{server.http}/api/v1/sessions/{slow[0]['session']}", auth=AUTH).json()
    assert detail["session"]["issues"] == ["failed"]  # at the default 4 s threshold
    for bad, named in (
        ({"issue": "sad"}, "issue must be one of failed"),
        ({"issue": "slow_start", "slow_start_seconds": 0}, "slow_start_seconds"),
    ):
        refused = httpx.post(
            f"{server.http}/api/v1/sessions",
            auth=AUTH,
            json={"query": {"key": key}, "timeframe": "1 day", **bad},
        )
        assert refused.status_code == 400 and named in refused.json()["error"]
    # served by the partial indexes, not a scan of the sessions
    await conn.execute("SET enable_seqscan = off")
    try:
        for name, condition in (
            ("stalled", "rebuffer_count >= 1"),
            ("slow_start", "startup_ms > 5000.0::float8"),
        ):
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    f"EXPLAIN SELECT id FROM sessions s WHERE s.{condition} "
                    "ORDER BY started_at DESC LIMIT 5"
                )
            )
            assert f"sessions_issue_{name}_idx" in plan, plan
    finally:
        await conn.execute("RESET enable_seqscan")


async def test_every_score_on_a_hand_computed_scenario(server: Server) -> None:
    """The viewer-experience scores of each kind of view, by hand (docs/api.md): per view in
    the session list, per bucket in /qoe, and the `low_quality` issue."""
    key = new_key(server)
    await asyncio.gather(
        # played: 2 s startup, 10 s watched, no stall, no rendition reported
        _viewer(
            server,
            key,
            [
                {"name": "play_request"},
                {"name": "first_frame", "ms": 2000},
                {"name": "play", "from": 0},
                {"name": "pause", "to": 10},
                {"name": "exit"},
            ],
        ),
        # failed before its first frame
        _viewer(server, key, [{"name": "play_request"}, {"name": "playback_failure", "code": 4}]),
        # waited over a second, left before start
        _viewer(server, key, [{"name": "play_request"}, {"sleep": 1.2}, {"name": "exit"}]),
        # left at once: no score at all
        _viewer(server, key, [{"name": "play_request"}, {"name": "exit"}]),
        # stalled twice (1 s each) in 8 s watched, instant start
        _viewer(
            server,
            key,
            [
                {"name": "play_request"},
                {"name": "first_frame", "ms": 0},
                {"name": "play", "from": 0},
                {"name": "rebuffering_start"},
                {"name": "rebuffering_end", "ms": 1000},
                {"name": "rebuffering_start"},
                {"name": "rebuffering_end", "ms": 1000},
                {"name": "pause", "to": 8},
                {"name": "exit"},
            ],
        ),
        # a 640×360 rendition shown in a 1280×720 box (2×: 100 % upscale), instant start
        _viewer(
            server,
            key,
            [
                {"name": "rendition", "width": 640, "height": 360, "dw": 1280, "dh": 720},
                {"name": "play_request"},
                {"name": "first_frame", "ms": 0},
                {"name": "play", "from": 0},
                {"sleep": 0.5},
                {"name": "pause", "to": 0.5},
                {"name": "exit"},
            ],
        ),
    )
    await asyncio.sleep(0.3)
    startup_2s = 100 * 8 / (8 + 2)  # 80
    stalled_smooth = (100 / math.sqrt(1 + (2 / 2) ** 2) + 100 * math.exp(-10 * 2 / (8 + 2))) / 2
    upscaled_quality = 100 * math.exp(-0.33 * (0.15 * 1.0 + 0.85 * 1.0))  # 71.89
    expected = {  # per view: success, startup, smoothness, quality, experience
        "played": (100, startup_2s, 100, None, 100 * (startup_2s + 100) / 2 / 100),
        "failed": (0, None, None, None, 0),
        "exited": (50, None, None, None, 50),
        "quick exit": (None, None, None, None, None),
        "stalled": (100, 100, stalled_smooth, None, 100 * (100 + stalled_smooth) / 2 / 100),
        "upscaled": (100, 100, 100, upscaled_quality, (100 + 100 + upscaled_quality) / 3),
    }
    names = ("playback_success", "startup_time", "smoothness", "video_quality")
    names += ("viewer_experience",)

    def rounded(values: tuple[float | None, ...]) -> dict[str, float | None]:
        return {
            n: None if v is None else round(float(v), 2) for n, v in zip(names, values, strict=True)
        }

    listed = httpx.post(
        f"{server.http}/api/v1/sessions",
        auth=AUTH,
        json={"query": {"key": key}, "timeframe": "1 day"},
    ).json()["sessions"]
    got = sorted(str(s["qoe"]["scores"]) for s in listed)
    assert got == sorted(str(rounded(v)) for v in expected.values())
    (upscaled,) = [s for s in listed if s["qoe"]["scores"]["video_quality"] is not None]
    assert upscaled["qoe"]["upscale_max_percentage"] == 100.0
    assert upscaled["qoe"]["upscale_mean_percentage"] == 100.0
    assert upscaled["issues"] == ["low_quality"]
    low = httpx.post(
        f"{server.http}/api/v1/sessions",
        auth=AUTH,
        json={"query": {"key": key}, "timeframe": "1 day", "issue": "low_quality"},
    ).json()["sessions"]
    assert [s["session"] for s in low] == [upscaled["session"]]

    answer = httpx.post(
        f"{server.http}/api/v1/qoe",
        auth=AUTH,
        json={"query": {"key": key}, "interval": "1 year", "timeframe": "1 day"},
    )
    (bucket,) = answer.json()["qoe"]
    columns = list(zip(*expected.values(), strict=True))
    means = tuple(
        sum(v for v in column if v is not None) / len([v for v in column if v is not None])
        for column in columns
    )
    assert bucket["scores"] == rounded(means)
    assert bucket["scored_views"] == dict(zip(names, (5, 3, 3, 1, 5), strict=True))
    assert bucket["views"] == 6

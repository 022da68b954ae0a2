"""The rollups answer exactly what the raw tables answer: random sessions (written whole,
and written incrementally as the socket writer does), random queries, every interval
unit, odd time zones, timeframe edges inside buckets, exact and inexact thresholds."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import secrets
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.model import rollup
from app.model.query import BucketQuery, EngagementQuery, Selection, Span, Window
from app.model.results import PlaysBucket, QoeCounts
from app.model.rows import Impression, IntervalRow, SessionRow, VideoIds, VideoRef, Written
from app.model.vocabulary import Breakdown
from app.query import shapes
from app.storage import db, key_store, rebuild, session_store, stats

UTC = dt.UTC
BASE = dt.datetime(2026, 3, 20, tzinfo=UTC)  # spans the 2026 DST switches in EU and US
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
]
SPANS = [
    Span(seconds=900),
    Span(seconds=3600),
    Span(seconds=86400),
    Span(seconds=604800),
    Span(seconds=1800),
    Span(seconds=60),
    Span(seconds=7),
    Span(months=1),
    Span(months=12),
]
_ids = itertools.count(5 * 10**12)


@st.composite
def session_specs(draw: st.DrawFn) -> dict[str, Any]:
    duration = draw(st.sampled_from([30.0, 30.0, 30.0, 600.5, None]))
    spans = []
    for _ in range(draw(st.integers(0, 4))):
        a = draw(st.integers(0, 40_000)) / 1000  # positions arrive in milliseconds
        spans.append((a, a + draw(st.integers(0, 25_000)) / 1000))
    if duration is not None:
        spans = [(min(a, duration), min(b, duration)) for a, b in spans]
    return {
        "offset": draw(st.integers(0, 10 * 86400 * 1000)) / 1000,
        "video": draw(st.sampled_from(["a", "a", "b", "c"])),
        "browser": draw(st.sampled_from(["chrome", "safari", "firefox", "other", "ie"])),
        "platform": draw(st.sampled_from(["mac", "ios", "windows", "other"])),
        "device": draw(st.sampled_from(["desktop", "mobile", "tablet"])),
        "page": draw(st.sampled_from(["https://a.example/", "https://b.example/x", None])),
        "duration": duration,
        "spans": spans,
        "incremental": draw(st.booleans()),
        # written as the socket writer does, from what it remembers it committed
        "remembered": draw(st.booleans()),
        "duration_change": draw(st.booleans()),
        "ended": draw(st.booleans()),
        "impressions": draw(st.integers(0, 2)),
        "qoe": draw(
            st.none()
            | st.builds(
                dict,
                startup=st.none() | st.integers(0, 20_000).map(lambda v: v / 10),
                stalls=st.integers(0, 3),
                stalled=st.integers(0, 50_000).map(lambda v: v / 1000),
                seeks=st.integers(0, 3),
                seek_ms=st.integers(1, 9_000).map(lambda v: v / 10),
                failure=st.none() | st.sampled_from([0, 2, 4]),
                exited=st.booleans(),
                quick=st.booleans(),
                played=st.booleans(),
                # (largest upscale, mean as a part of it, seconds shown) in hundredths
                upscale=st.none()
                | st.tuples(st.integers(0, 300), st.integers(0, 100), st.integers(0, 90_000)),
            )
        ),
    }


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(st.integers(-86400, 9 * 86400)) + draw(st.sampled_from([0, 0, 0.5, 0.001]))
    length = draw(st.sampled_from([900, 3600, 86400, 3 * 86400, 12 * 86400])) + draw(
        st.sampled_from([0, 0, 450, 3599.25])
    )
    return {
        "start": start,
        "end": start + length,
        "selection": draw(st.sampled_from(["key", "video-a", "identifier", "video-b"])),
        "interval": draw(st.sampled_from(SPANS)),
        "timezone": draw(st.sampled_from(ZONES)),
        "threshold": draw(st.sampled_from([0, 1, 1, 1.5, 5, 60, 61, 0.25])),
        "ranges": draw(st.sampled_from([10, 20, 7, 100])),
    }


async def _write(
    conn: asyncpg.Connection, key: str, specs: list[dict[str, Any]], base: dt.datetime = BASE
) -> None:
    refs = {v: VideoRef.of(key, None, {"video_id": v}) for v in "abc"}
    refs["identified"] = VideoRef.of(key, "legacy-id", {})
    ids = await session_store.ensure_videos(conn, list(refs.values()))
    whole_rows, whole_intervals = [], []
    cache = VideoIds()
    written = Written()
    for spec in specs:
        ref = refs["identified" if spec["video"] == "c" else spec["video"]]
        start = base + dt.timedelta(seconds=spec["offset"])
        row = SessionRow(
            next(_ids),
            start,
            ref,
            spec["browser"],
            spec["platform"],
            spec["device"],
            spec["page"],
            None,
            ended_at=start,
            duration=spec["duration"],
        )
        quality = spec.get("qoe")
        final_qoe = None
        if quality is not None:
            row.played = quality["played"]
            final_qoe = rollup.Qoe(
                quality["startup"],
                quality["stalls"],
                quality["stalled"],
                quality["seeks"],
                quality["seek_ms"] * quality["seeks"],
                quality["failure"],
                quality["failure"] is not None and quality["startup"] is None,
                quality["exited"] and quality["failure"] is None,
                quality["exited"] and quality["failure"] is None and quality.get("quick", False),
                *_upscale(quality.get("upscale")),
            )
            # what the first snapshot knew: requested, nothing measured yet
            row.qoe = rollup.Qoe() if spec["incremental"] else final_qoe
        intervals = [
            IntervalRow(row.id, ref, a, b) for a, b in (spec["spans"] if row.played else [])
        ]
        loads = [
            Impression(
                ref,
                start - dt.timedelta(seconds=30 * n),
                spec["browser"],
                spec["platform"],
                spec["device"],
                spec["page"],
                None,
            )
            for n in range(spec.get("impressions", 1))
        ]
        if loads:
            async with conn.transaction():
                await session_store.write_batch(conn, loads, cache)
        row.ended = spec.get("ended", False)
        if not spec["incremental"]:
            for i in intervals:
                row.watch_seconds += max(0.0, i.media_to - i.media_from)
                row.furthest = max(row.furthest, i.media_to)
            whole_rows.append(row)
            whole_intervals += intervals
            continue
        # as the socket writer does: a snapshot per event, intervals as they close
        remembered = written if spec.get("remembered") else None

        async def put(ops: list[Any], remembered: Written | None = remembered) -> None:
            async with conn.transaction():
                outcome = await session_store.write_batch(conn, ops, cache, written=remembered)
            if remembered is not None:
                remembered.apply(outcome.sessions)

        await put([dataclasses.replace(row)])
        row.qoe = final_qoe
        for n, i in enumerate(intervals):
            row.watch_seconds += max(0.0, i.media_to - i.media_from)
            row.furthest = max(row.furthest, i.media_to)
            if spec["duration_change"] and n == 0 and row.duration is not None:
                row.duration = row.duration + 1  # a durationchange mid-session
            await put([i, dataclasses.replace(row)])
        if (spec["duration_change"] and row.duration is not None) or not intervals:
            if row.duration is not None:
                row.duration = spec["duration"]  # and back
            await put([dataclasses.replace(row)])
    if whole_rows:
        async with conn.transaction():
            await session_store.copy_rows(conn, ids, whole_rows, whole_intervals, [])


def _upscale(drawn: tuple[int, int, int] | None) -> tuple[float | None, float, float]:
    """Qoe's (upscale_max, upscale_sum, upscale_seconds) from drawn hundredths."""
    if drawn is None:
        return None, 0.0, 0.0
    largest, part, seconds = drawn[0] / 100, drawn[1] / 100, drawn[2] / 100
    return largest, largest * part * seconds, seconds


def _selection(key: str, which: str) -> Selection:
    if which == "key":
        return Selection(key=key)
    if which == "identifier":
        return Selection(identifier="legacy-id", key=key)
    return Selection(video={"video_id": which.split("-")[1]}, key=key)


def _same_plays(a: list[PlaysBucket], b: list[PlaysBucket]) -> None:
    assert [(x.bucket, x.views, x.counts, x.impressions) for x in a] == [
        (x.bucket, x.views, x.counts, x.impressions) for x in b
    ]
    for x, y in zip(a, b, strict=True):
        assert x.watch_seconds == pytest.approx(y.watch_seconds, abs=1e-6)


def _same_qoe(
    a: dict[dt.datetime, dict[str, QoeCounts]],
    b: dict[dt.datetime, dict[str, QoeCounts]],
) -> None:
    assert list(a) == list(b)
    for bucket, groups in a.items():
        assert set(groups) == set(b[bucket])
        for classes, counts in groups.items():
            other = b[bucket][classes]
            assert counts.values == pytest.approx(other.values, abs=1e-6)
            for mine, theirs in ((counts.startup, other.startup), (counts.seek, other.seek)):
                assert {i: c for i, c in mine.items() if c} == theirs
            # the scores as the API reports them: identical
            assert shapes.qoe_figures(counts)["scores"] == shapes.qoe_figures(other)["scores"]


@pytest.fixture(params=["postgresql", "timescaledb"])
def any_database(request: pytest.FixtureRequest, database_url: str) -> str:
    """The randomised equivalence runs on plain PostgreSQL and on TimescaleDB."""
    if request.param == "timescaledb":
        return str(request.getfixturevalue("timescale_url"))
    return database_url


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    specs=st.lists(session_specs(), min_size=0, max_size=25),
    asks=st.lists(queries(), min_size=1, max_size=4),
)
def test_rollups_equal_the_raw_answers(
    any_database: str, specs: list[dict[str, Any]], asks: list[dict[str, Any]]
) -> None:
    async def run() -> None:
        conn = await db.connect(any_database)
        try:
            key = "roll-" + secrets.token_hex(6)
            await key_store.insert_key(conn, key)
            await _write(conn, key, specs)
            for ask in asks:
                window = Window(
                    BASE + dt.timedelta(seconds=ask["start"]),
                    BASE + dt.timedelta(seconds=ask["end"]),
                )
                sel = _selection(key, ask["selection"])
                q = BucketQuery(
                    sel, window, ask["interval"], ask["timezone"], float(ask["threshold"])
                )
                if (
                    q.interval.seconds
                    and (window.end - window.start).total_seconds() / q.interval.seconds > 5000
                ):
                    q = dataclasses.replace(q, interval=Span(seconds=3600))
                _same_plays(
                    await stats.plays(conn, q),
                    await stats.plays(conn, q, use_rollups=False),
                )
                assert await stats.sources(conn, q) == await stats.sources(
                    conn, q, use_rollups=False
                )
                fast_c = await stats.completion(conn, q)
                slow_c = await stats.completion(conn, q, use_rollups=False)
                assert list(fast_c) == list(slow_c)
                for bucket, devices in fast_c.items():
                    assert set(devices) == set(slow_c[bucket])
                    for device, counts in devices.items():
                        assert counts.values == pytest.approx(
                            slow_c[bucket][device].values, abs=1e-9
                        )
                for breakdown in (None, Breakdown.BROWSER, Breakdown.DEVICE):
                    _same_qoe(
                        await stats.qoe(conn, q, breakdown=breakdown),
                        await stats.qoe(conn, q, use_rollups=False, breakdown=breakdown),
                    )
                e = EngagementQuery(sel, window, ask["ranges"])
                fast, slow = (
                    await stats.engagement(conn, e),
                    await stats.engagement(conn, e, use_rollups=False),
                )
                assert fast[1] == slow[1]
                assert fast[0] == pytest.approx(slow[0]) if slow[0] else fast[0] is None
        finally:
            await conn.close()

    asyncio.run(run())


def test_plans_use_the_rollups_where_they_are_exact() -> None:
    sel = Selection(key="k")
    window = Window(
        dt.datetime(2026, 1, 1, 0, 7, tzinfo=UTC), dt.datetime(2026, 1, 31, 13, 2, tzinfo=UTC)
    )
    q = BucketQuery(sel, window, Span(seconds=3600), "Europe/Berlin", 1.0)
    cls, inner = stats.bucket_rollup_plan(q)  # type: ignore[misc]
    assert cls == 1 and inner.start.minute == 15 and inner.end.minute == 0
    assert stats.bucket_rollup_plan(dataclasses.replace(q, timezone="Asia/Kathmandu"))
    assert stats.bucket_rollup_plan(dataclasses.replace(q, minimum_watch_seconds=1.5)) is None
    assert stats.bucket_rollup_plan(dataclasses.replace(q, interval=Span(seconds=60))) is None
    assert (
        stats.bucket_rollup_plan(
            dataclasses.replace(q, selection=Selection(key="k", session={"a": 1}))
        )
        is None
    )
    # QoE: hourly rollups, for zones whose offsets are whole hours
    inner = stats.qoe_plan(q)
    assert inner is not None and inner.start.minute == 0 and inner.start.hour == 1
    assert stats.qoe_plan(dataclasses.replace(q, timezone="Asia/Kolkata")) is None
    assert stats.qoe_plan(dataclasses.replace(q, interval=Span(seconds=900))) is None
    assert stats.qoe_plan(dataclasses.replace(q, interval=Span(months=1)))
    assert rollup.watch_class(0.99) == 0 and rollup.watch_class(1) == 1
    assert rollup.watch_class(59.9) == 6 and rollup.watch_class(600) == 7


async def test_a_session_still_playing_counts_with_its_current_watch_time(
    server: Any, conn: asyncpg.Connection
) -> None:
    import httpx

    from tests.conftest import AUTH
    from tests.phx import Phx, join_payload
    from tests.test_ingest_socket import new_key, topic

    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    await phx.join(t, join_payload(key))
    await phx.event(t, name="play", duration=100, **{"from": 0})
    await phx.event(t, name="pause", duration=100, to=4)
    await phx.event(t, name="play", duration=100, **{"from": 4})
    await phx.event(t, name="pause", duration=100, to=7.5)  # still open: the page stays
    body = {"query": {"key": key}, "interval": "1 day", "timeframe": "1 day"}
    plays = httpx.post(f"{server.http}/api/v1/plays", auth=AUTH, json=body).json()
    assert plays["views"][0]["views"] == 1 and plays["views"][0]["total_view_time"] == 7.5
    engagement = httpx.post(
        f"{server.http}/api/v1/engagement",
        auth=AUTH,
        json={"query": {"key": key}, "timeframe": "1 day"},
    ).json()
    assert [r["viewers"] for r in engagement["engagement"]] == [1] + [0] * 9
    await phx.close()


REBUILT = (
    "rollup_plays",
    "rollup_sources",
    "rollup_engagement",
    "rollup_key_plays",
    "rollup_key_sources",
    "rollup_qoe",
    "rollup_key_qoe",
    "rollup_qoe_hist",
    "rollup_key_qoe_hist",
    "rollup_completion",
    "rollup_key_completion",
    "rollup_impressions",
    "rollup_key_impressions",
)


async def _rollup_snapshot(conn: asyncpg.Connection, key: str) -> list[list[Any]]:
    """One key's rollup rows that count something, histogram arrays by meaning. (This
    test process writes shard 0, as a rebuild does; other tests' servers wrote their own
    keys in other shards.)"""

    def counted(r: asyncpg.Record) -> bool:
        for column in ("sessions", "views", "impressions"):
            if column in r.keys():
                return bool(r[column])
        return any(r[c] for c in rollup.REACHED_COLUMNS)

    def semantic(array: str) -> str:
        """A histogram array as its non-zero buckets ("12:3,14:1"): arrays that mean the
        same may differ in bounds, NULL gaps and zeros left by a -1."""
        return (
            f"(SELECT string_agg(i || ':' || {array}[i], ',' ORDER BY i) "
            f"FROM generate_subscripts({array}, 1) i WHERE coalesce({array}[i], 0) <> 0)"
        )

    out = []
    for table in REBUILT:
        columns = "*"
        if table in ("rollup_qoe", "rollup_key_qoe"):
            columns = ", ".join(
                c
                for c in (
                    "video_id" if table == "rollup_qoe" else "key",
                    "bucket",
                    "browser",
                    "platform",
                    "device",
                    *rollup.QOE_COLUMNS,
                )
            )
            columns += f", {semantic('startup_hist')}, {semantic('seek_hist')}"
        mine = (
            "key = $1" if "_key_" in table else "video_id IN (SELECT id FROM videos WHERE key = $1)"
        )
        rows = await conn.fetch(f"SELECT {columns} FROM {table} WHERE {mine}", key)
        # `changes` counts writes (a version, not a figure): a rebuild counts each once
        out.append(
            sorted(
                tuple(
                    round(v, 6) if isinstance(v, float) else v
                    for k, v in r.items()
                    if k != "changes"
                )
                for r in rows
                if counted(r)
            )
        )
    return out


async def test_backfill_matches_what_ingest_maintains(conn: asyncpg.Connection) -> None:
    """Rebuilding the rollups from the sessions gives exactly what was maintained."""
    key = "bf-" + secrets.token_hex(4)
    await key_store.insert_key(conn, key)
    specs = [
        {
            "offset": i * 4000.0,
            "video": "abc"[i % 3],
            "browser": "chrome",
            "platform": "mac",
            "device": "desktop",
            "page": "https://p.example/",
            "duration": 30.0,
            "spans": [(0, 5 + i), (3, 9)],
            "incremental": i % 2 == 0,
            "duration_change": i % 4 == 0,
            "qoe": None
            if i % 3 == 0
            else {
                "startup": 100.0 * i,
                "stalls": i % 2,
                "stalled": 0.5 * (i % 2),
                "seeks": 1,
                "seek_ms": 40.0 + i,
                "failure": 4 if i == 5 else None,
                "exited": i in (7, 8),
                "quick": i == 8,
                "played": i not in (5, 7, 8),
                "upscale": None if i % 2 else (25 * i, 80, 1000 * i),
            },
        }
        for i in range(12)
    ]
    await _write(conn, key, specs)
    before = await _rollup_snapshot(conn, key)
    await conn.execute("UPDATE rollup_state SET done_at = NULL WHERE name = 'backfill'")
    assert await rebuild.backfill(conn)
    assert await _rollup_snapshot(conn, key) == before
    assert not await rebuild.backfill(conn)  # once


@st.composite
def edge_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Sessions on the edges the rollups branch on: watch time exactly at a watch class
    bound, furthest exactly at a milestone, islands ending exactly on a range edge,
    startups on histogram bucket edges, durations unknown or zero."""
    spec = draw(session_specs())
    duration = draw(st.sampled_from([60.0, 100.0, 10.0, None, 0.0]))
    ends = draw(
        st.lists(
            st.sampled_from([0, 1, 2, 3, 5, 10, 15, 30, 45, 57, 59, 60, 75, 95, 99, 100]),
            min_size=0,
            max_size=3,
        )
    )
    spans, at = [], 0.0
    for end in ends:
        if end > at:
            spans.append((at, float(end)))
        at = float(end) + draw(st.sampled_from([0.0, 0.0, 2.0]))
    if duration:
        spans = [(min(a, duration), min(b, duration)) for a, b in spans]
    spec.update(duration=duration, spans=spans)
    if spec["qoe"] is not None:
        spec["qoe"]["startup"] = draw(
            st.none() | st.sampled_from([0.0, 1.0, 1.1, 1.21, 999.9, 1000.0, 600_000.0, 700_000.0])
        )
    return spec


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(specs=st.lists(st.one_of(session_specs(), edge_specs()), min_size=1, max_size=20))
def test_a_rebuild_equals_what_ingest_maintained(
    any_database: str, specs: list[dict[str, Any]]
) -> None:
    """The set-based SQL rebuild (seed, backfill) and the writer's deltas agree on every
    rollup row, random sessions and edge cases alike."""

    async def run() -> None:
        conn = await db.connect(any_database)
        try:
            key = "rb-" + secrets.token_hex(6)
            await key_store.insert_key(conn, key)
            await _write(conn, key, specs)
            before = await _rollup_snapshot(conn, key)
            async with conn.transaction():
                await rebuild.rebuild(conn)
            assert await _rollup_snapshot(conn, key) == before
        finally:
            await conn.close()

    asyncio.run(run())


async def test_writers_in_different_shards_add_up(database_url: str) -> None:
    """Two processes' writers (connections with different vidmetrics.shard) update the same
    sessions' buckets in rows of their own; the answers are the raw answers."""
    pools = [await db.create_pool(database_url, shard=n) for n in (1, 2)]
    try:
        async with pools[0].acquire() as conn:
            key = "shard-" + secrets.token_hex(4)
            await key_store.insert_key(conn, key)
            specs = [
                {
                    "offset": 3600.0 * (i // 4),
                    "video": "ab"[i % 2],
                    "browser": "chrome",
                    "platform": "mac",
                    "device": "desktop",
                    "page": "https://p.example/",
                    "duration": 30.0,
                    "spans": [(0, 3 + i), (10, 12)],
                    "incremental": True,
                    "duration_change": False,
                    "qoe": {
                        "startup": 100.0 + i,
                        "stalls": 1,
                        "stalled": 0.5,
                        "seeks": 0,
                        "seek_ms": 1.0,
                        "failure": None,
                        "exited": False,
                        "played": True,
                    },
                }
                for i in range(12)
            ]
            await _write(conn, key, specs[:6])
        async with pools[1].acquire() as conn:
            await _write(conn, key, specs[6:])
            shards = await conn.fetchval(
                "SELECT count(DISTINCT shard) FROM rollup_key_plays WHERE key = $1", key
            )
            assert shards == 2
            window = Window(BASE, BASE + dt.timedelta(days=1))
            q = BucketQuery(Selection(key=key), window, Span(seconds=3600), "Europe/Berlin", 1)
            _same_plays(
                await stats.plays(conn, q),
                await stats.plays(conn, q, use_rollups=False),
            )
            assert await stats.sources(conn, q) == await stats.sources(conn, q, use_rollups=False)
            _same_qoe(await stats.qoe(conn, q), await stats.qoe(conn, q, use_rollups=False))
            e = EngagementQuery(Selection(key=key, video={"video_id": "a"}), window, 10)
            assert await stats.engagement(conn, e) == await stats.engagement(
                conn, e, use_rollups=False
            )
    finally:
        for pool in pools:
            await pool.close()


async def test_seeded_rollups_equal_a_rebuild(database_url: str) -> None:
    """`vidmetrics seed` counts each chunk into the rollups as it inserts it (two
    connections side by side, meeting at chunk edges): the same rows a rebuild makes."""
    from app.storage import demo

    conns = [await db.connect(database_url) for _ in range(2)]
    try:
        key = "seeded-" + secrets.token_hex(4)
        await key_store.insert_key(conns[0], key)
        refs = demo.videos(key, 6)
        ids = await session_store.ensure_videos(conns[0], refs)
        events = await demo.seed(
            conns,
            demo.MODEL,
            sessions=3000,
            days=2,
            end=BASE,
            seed_value=3,
            video_ids=[ids[(r.key, r.identity)] for r in refs],
            durations=demo.durations(3, 6),
            chunk=400,
        )
        assert events == await conns[0].fetchval(
            "SELECT sum(s.event_count) FROM sessions s JOIN videos v ON v.id = s.video_id "
            "WHERE v.key = $1",
            key,
        )
        before = await _rollup_snapshot(conns[0], key)
        assert all(before)  # every rollup table has rows for it
        async with conns[0].transaction():
            await rebuild.rebuild(conns[0])
        assert await _rollup_snapshot(conns[0], key) == before
    finally:
        for c in conns:
            await c.close()


async def test_engagement_of_mixed_durations_follows_every_write(conn: asyncpg.Connection) -> None:
    """All videos of a key with different durations: whole buckets come from the
    engagement cache, and a bucket whose sessions changed (watched further, a new
    session, only a new duration) is recomputed — every answer equals the raw one."""
    key = "mix-" + secrets.token_hex(4)
    await key_store.insert_key(conn, key)
    start = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
    specs = [
        {
            "offset": i * 2000.0,
            "video": "ab"[i % 2],
            "browser": "chrome",
            "platform": "mac",
            "device": "desktop",
            "page": None,
            "duration": (30.0, 100.0)[i % 2],
            "spans": [(i % 7, 12 + i)],
            "incremental": False,
            "duration_change": False,
            "ended": False,
            "impressions": 0,
            "qoe": None,
        }
        for i in range(12)
    ]
    await _write(conn, key, specs, base=start)
    window = Window(start - dt.timedelta(minutes=7), start + dt.timedelta(days=1, minutes=7))
    ask = EngagementQuery(Selection(key=key), window, 20)

    async def same() -> dict[int, int]:
        fast = await stats.engagement(conn, ask)
        assert fast == await stats.engagement(conn, ask, use_rollups=False)
        return fast[1]

    first = await same()
    cached = await conn.fetchval("SELECT count(*) FROM engagement_cache WHERE key = $1", key)
    assert cached >= 10  # one entry per bucket with sessions
    assert await same() == first  # from the cache now
    ((sid, started, vid_),) = await conn.fetch(
        "SELECT s.id, s.started_at, s.video_id FROM sessions s JOIN videos v "
        "ON v.id = s.video_id WHERE v.key = $1 AND v.metadata->>'video_id' = 'b' "
        "ORDER BY s.started_at LIMIT 1",
        key,
    )
    row = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", sid)
    ref = VideoRef.of(key, None, {"video_id": "b"})
    ids = VideoIds()

    async def snapshot(duration: float, spans: list[tuple[float, float]]) -> None:
        snap = SessionRow(
            sid,
            started,
            ref,
            row["browser"],
            row["platform"],
            row["device"],
            None,
            None,
            duration=duration,
            watch_seconds=row["watch_seconds"] + 1,
        )
        async with conn.transaction():
            await session_store.write_batch(
                conn, [snap, *[IntervalRow(sid, ref, a, b) for a, b in spans]], ids
            )

    await snapshot(100.0, [(60.0, 90.0)])  # watched further: a cached bucket changed
    assert await same() != first
    await snapshot(95.0, [])  # only the duration changed
    await same()
    more = [{**specs[0], "offset": 5000.0, "spans": [(0.0, 29.0)]}]  # a new session
    await _write(conn, key, more, base=start)
    await same()

"""Demo data (what `vidmetrics seed` writes, for demos and benchmarks): the shape of the
traffic (MODEL, at the end) and plausible dummy sessions generated inside PostgreSQL: each
chunk of sessions is drawn by one SELECT into a temporary table, turned into session and
page-load rows, inserted, and counted into the rollups by the set-based statements of
app/storage/rebuild.py (adding) — all in one transaction per chunk. Nothing passes
through Python per session, so 10 million sessions take minutes.

Deterministic: every random draw is a hash of (session number, seed, draw number)
(`hashint8extended`), so the same seed, sizes and end give the same rows, in any plan.

The model (MODEL below): a video by a Pareto(1.2) rank (a few videos get
most views), a device mix, a start time uniform over the days, a page of the video's site;
a main run of playback from the start (or, 30 %, after a seek into the first 90 %) cut
into 1-4 play/pause pieces with short pauses, and (30 %) a second run after a seek; the
raw events to match (play {from}, pause {to}, ended). 40 % of views come from the
first-party client: play_request, first_frame {ms} (log-normal startup, ~0.9 s on
desktops, ~1.6 s elsewhere), exit; 20 % of them stall; a few fail mid-way; and per such
view a few extra views that were abandoned (3 %) or failed (0.8 %) before starting.
Every session also has its page load (impression), plus loads that never played.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.model.rows import VideoRef
from app.model.vocabulary import BROWSERS, DEVICES, EVENT_NAMES, PAYLOAD_NUMBERS, PLATFORMS
from app.storage import db, key_store, session_store
from app.storage.driver import Connection
from app.storage.rebuild import WORK_MEM, statements
from app.storage.tables import SESSION_ID_BLOCK


@dataclass(frozen=True)
class Model:
    """What a seeded session looks like (see the module docstring)."""

    mix: Sequence[tuple[float, str, str, str]]  # (weight, browser, platform, device)
    pages: Sequence[str]
    pieces: Sequence[int]  # play/pause pieces of the main run, drawn uniformly
    seek_rate: float
    second_run_rate: float
    run_seconds: float  # mean length of a piece / of the second run
    pause_seconds: float
    unplayed_loads: float  # page loads that never play, per session that does
    qoe_share: float
    stall_rate: float
    exit_rate: float
    startup_failure_rate: float
    playback_failure_rate: float


_MASK = 2**53 - 1


def _u(k: int, n: str = "n") -> str:
    """A uniform draw in (0, 1): number k of session n under the seed ($1). float8 all the
    way: a numeric literal here would make every draw (and ln, exp on it) numeric."""
    return (
        f"(((hashint8extended({n}, $1::int8 * 1000 + {k}) & {_MASK})::float8 + 0.5) "
        f"/ {_MASK + 1}::float8)"
    )


def _normal(k: int) -> str:
    """A standard normal draw (Box-Muller over draws k and k + 1)."""
    return f"(sqrt(-2 * ln({_u(k)})) * cos(2 * pi() * {_u(k + 1)}))"


def _code(name: str) -> str:
    return f"{EVENT_NAMES.index(name):02x}"


def _event(at_seconds: str, name: str, field: str | None = None, value: str = "") -> str:
    """One packed event (app/storage/timeline.py) as a bytea expression."""
    head = f"int4send(round(({at_seconds}) * 1000)::int)"
    if field is None:
        return f"{head} || '\\x{_code(name)}00'::bytea"
    return (
        f"{head} || '\\x{_code(name)}01{PAYLOAD_NUMBERS.index(field):02x}'::bytea "
        f"|| float8send(({value})::float8)"
    )


def _draws(m: Model) -> str:
    """The SELECT that draws a chunk of sessions ($2 <= n < $3) into columns."""
    total = sum(w for w, *_ in m.mix)
    cumulative, running = [], 0.0
    for w, *_ in m.mix:
        cumulative.append(running)
        running += w
    pieces = ", ".join(map(str, m.pieces))
    return f"""
        SELECT n, v, ($6::bigint[])[v + 1] AS video_id, ($7::float8[])[v + 1] AS duration,
               ($8::text[])[mix] AS browser, ($9::text[])[mix] AS platform,
               ($10::text[])[mix] AS device,
               -- in session-number order (a chunk is a stretch of time), jittered
               $4::timestamptz - make_interval(secs => $5 * (1 - (n + {_u(3)}) / $13))
                   AS started_at,
               'https://site' || (v % 3) || '.example'
                   || ($11::text[])[1 + floor({_u(4)} * {len(m.pages)})::int] AS page,
               (ARRAY[{pieces}])[1 + floor({_u(5)} * {len(m.pieces)})::int] AS pieces,
               {_u(6)} < {m.seek_rate} AS seeked, {_u(7)} AS seek_to,
               {_u(8)} < {m.second_run_rate} AS second, {_u(9)} AS second_at,
               -ln({_u(10)}) * {m.run_seconds} AS want1, -ln({_u(11)}) * {m.run_seconds} AS want2,
               -ln({_u(12)}) * {m.pause_seconds} AS pause,
               {_u(13)} < {m.qoe_share} AS qoe,
               exp(0.5 * {_normal(14)}) AS startup_factor,
               {_u(16)} < {m.stall_rate} AS stalled,
               (ARRAY[1, 1, 1, 2, 3])[1 + floor({_u(17)} * 5)::int] AS stalls,
               exp(0.3 + 0.8 * {_normal(18)}) AS stall_seconds,
               exp(5.3 + 0.6 * {_normal(20)}) AS seek_ms,
               {_u(22)} < {m.playback_failure_rate} AS failed,
               {_u(23)} AS unstarted,
               floor(ln({_u(24)}) / ln({m.unplayed_loads / (1 + m.unplayed_loads)}))::int
                   AS extra_loads,
               {_u(25)} AS load_lead
          FROM (SELECT n, least(floor(1 / power({_u(1)}, 1 / 1.2::float8)) - 1, $12 - 1)::int AS v,
                       width_bucket({_u(2)} * {total}, ARRAY{cumulative}::float8[]) AS mix
                  FROM generate_series($2::int8, $3::int8 - 1) AS n) d"""


def _runs() -> str:
    """Playback of each drawn session: runs, islands, totals (from the temp table)."""
    return """
        SELECT d.*, p.p0, r1.l1, r1.e1, r1.ended1, r2.on2, r2.p2, r2.l2, r2.e2,
               r1.ended1 OR (r2.on2 AND r2.e2 >= d.duration) AS ended,
               CASE WHEN d.qoe THEN round((d.startup_factor
                    * CASE WHEN d.device = 'desktop' THEN 900 ELSE 1600 END)::numeric, 1)::float8
                    END AS startup_ms
          FROM seed_chunk d,
               LATERAL (SELECT CASE WHEN d.seeked THEN d.seek_to * d.duration * 0.9 ELSE 0 END
                                   AS p0) p,
               LATERAL (SELECT least(d.duration - p.p0, d.want1) AS l1,
                               p.p0 + least(d.duration - p.p0, d.want1) AS e1,
                               p.p0 + least(d.duration - p.p0, d.want1) >= d.duration AS ended1
                       ) r1,
               LATERAL (SELECT d.second AND NOT r1.ended1 AS on2,
                               d.second_at * d.duration * 0.9 AS p2,
                               least(d.duration - d.second_at * d.duration * 0.9, d.want2) AS l2,
                               d.second_at * d.duration * 0.9
                               + least(d.duration - d.second_at * d.duration * 0.9, d.want2)
                                   AS e2) r2"""


# session number n has ids 2n (its play) and 2n + 1 (an unplayed view, if any)
_IDENT = f"($1::int8[])[({{m}}) / {SESSION_ID_BLOCK} + 1] + ({{m}}) % {SESSION_ID_BLOCK}"
_PIECE = "(s.l1 / s.pieces)"
_SHIFT = "(CASE WHEN s.qoe THEN s.startup_ms / 1000 ELSE 0 END)"
_STEP = f"({_PIECE} + s.pause)"
_SECOND_AT = f"{_SHIFT} + s.pieces * {_STEP}"
_LAST_AT = (
    f"(CASE WHEN s.on2 THEN {_SECOND_AT} + s.l2 ELSE {_SHIFT} + s.pieces * {_STEP} - s.pause END)"
)


# how much a played QoE view was upscaled (a constant per view, shown the whole time):
# a 720p rendition on a 1080p-wide desktop player for views that also seeked, else none
_UPSCALE = "(CASE WHEN s.device = 'desktop' AND s.seeked THEN 0.5::float8 ELSE 0::float8 END)"


def _timeline() -> str:
    """A played session's packed events: play_request and first_frame (QoE views), the
    play/pause pieces of the main run, the second run, ended, exit (QoE views)."""
    parts = [
        f"CASE WHEN s.qoe THEN {_event('0', 'play_request')} || "
        f"{_event('s.startup_ms / 1000', 'first_frame', 'ms', 's.startup_ms')} "
        f"ELSE ''::bytea END"
    ]
    for i in range(1, 5):
        play_at = f"{_SHIFT} + {i - 1} * {_STEP}"
        play = _event(play_at, "play", "from", f"s.p0 + {i - 1} * {_PIECE}")
        pause = _event(f"{play_at} + {_PIECE}", "pause", "to", f"s.p0 + {i} * {_PIECE}")
        parts.append(f"CASE WHEN s.pieces >= {i} THEN {play} || {pause} ELSE ''::bytea END")
    parts += [
        f"CASE WHEN s.on2 THEN {_event(_SECOND_AT, 'play', 'from', 's.p2')} || "
        f"{_event(f'{_SECOND_AT} + s.l2', 'pause', 'to', 's.e2')} ELSE ''::bytea END",
        f"CASE WHEN s.ended THEN {_event(_LAST_AT, 'ended')} ELSE ''::bytea END",
        f"CASE WHEN s.qoe THEN {_event(f'{_LAST_AT} + 1', 'exit')} ELSE ''::bytea END",
    ]
    return " || ".join(parts)


def _insert_played() -> str:
    """The chunk's played sessions into seed_sessions ($1: the blocks of session ids)."""
    counted = "2 * s.pieces + 2 * s.on2::int + s.ended::int + 3 * s.qoe::int"
    overlap = "s.on2 AND s.p2 <= s.e1 AND (s.p0) <= s.e2"
    islands = f"""CASE WHEN NOT s.on2 THEN ARRAY[s.p0, s.e1]
                       WHEN {overlap} THEN ARRAY[least(s.p0, s.p2), greatest(s.e1, s.e2)]
                       WHEN s.p2 > s.p0 THEN ARRAY[s.p0, s.e1, s.p2, s.e2]
                       ELSE ARRAY[s.p2, s.e2, s.p0, s.e1] END"""
    seeks = "(s.seeked::int + s.on2::int)"
    return f"""
        INSERT INTO seed_sessions (id, started_at, video_id, ended_at, browser, platform,
                              device, page, duration, watch_seconds, furthest, islands, ended,
                              played, qoe, startup_ms, rebuffer_count,
                              rebuffer_seconds, seek_count, seek_ms, failure,
                              failed_before_start, exited_before_start, quick_exit,
                              upscale_max, upscale_sum, upscale_seconds, events, event_count)
        SELECT {_IDENT.format(m="2 * s.n")}, s.started_at, s.video_id,
               s.started_at + make_interval(secs => {_LAST_AT} + s.qoe::int),
               s.browser, s.platform, s.device, s.page, s.duration, s.l1 + s.on2::int * s.l2,
               greatest(s.e1, CASE WHEN s.on2 THEN s.e2 ELSE 0 END), {islands}, s.ended,
               true, CASE WHEN s.qoe THEN true END, s.startup_ms,
               CASE WHEN s.qoe THEN s.stalled::int * s.stalls END,
               CASE WHEN s.qoe THEN round((s.stalled::int * s.stalls * s.stall_seconds)
                                          ::numeric, 3)::float8 END,
               CASE WHEN s.qoe THEN {seeks} END,
               CASE WHEN s.qoe THEN round(({seeks} * s.seek_ms)::numeric, 1)::float8 END,
               CASE WHEN s.qoe AND s.failed THEN 2 END,
               CASE WHEN s.qoe THEN false END, CASE WHEN s.qoe THEN false END,
               CASE WHEN s.qoe THEN false END,
               CASE WHEN s.qoe THEN {_UPSCALE} END,
               CASE WHEN s.qoe THEN {_UPSCALE} * (s.l1 + s.on2::int * s.l2) END,
               CASE WHEN s.qoe THEN s.l1 + s.on2::int * s.l2 END,
               {_timeline()}, {counted}
          FROM ({_runs()}) s"""


def _insert_unplayed(model: Model) -> str:
    """Views requested and abandoned, or failed, before they started ($1: id blocks)."""
    exit_rate, failure_rate = model.exit_rate, model.startup_failure_rate
    failed = f"s.unstarted >= {exit_rate}"
    return f"""
        INSERT INTO seed_sessions (id, started_at, video_id, ended_at, browser, platform,
                              device, page, duration, played, qoe, rebuffer_count, rebuffer_seconds,
                              seek_count, seek_ms, failure, failed_before_start,
                              exited_before_start, quick_exit, islands, events, event_count)
        SELECT {_IDENT.format(m="2 * s.n + 1")}, s.started_at + interval '1 second', s.video_id,
               s.started_at + interval '9 seconds', s.browser, s.platform, s.device, s.page,
               s.duration, false, true, 0, 0, 0, 0, CASE WHEN {failed} THEN 4 END, {failed},
               NOT ({failed}), false, '{{}}',
               {_event("0", "play_request")} || CASE WHEN {failed}
                   THEN {_event("5", "playback_failure", "code", "4")}
                   ELSE {_event("8", "exit")} END, 2
          FROM seed_chunk s
         WHERE s.qoe AND s.unstarted < {exit_rate + failure_rate}"""


# each session's own page load just before it; loads that never played in the two hours
# before ($1: the seed)
_INSERT_LOADS = f"""
    INSERT INTO seed_loads (video_id, at, browser, platform, device, page)
    SELECT s.video_id, CASE WHEN j = 0 THEN s.started_at
               - make_interval(secs => 0.5 + 7.5 * s.load_lead)
               ELSE s.started_at - make_interval(secs => 7200 * {_u(26, "s.n * 64 + j")})
               END,
           s.browser, s.platform, s.device, s.page
      FROM seed_chunk s, generate_series(0, least(s.extra_loads, 60)) AS j"""


@dataclass(frozen=True)
class _Plan:
    """What every chunk of one seed run shares."""

    model: Model
    seed_value: int
    end: dt.datetime
    days: int
    blocks: list[int]  # the session-id blocks reserved for the run
    args: list[Any]  # the draws' parameters after (seed, lo, hi, end, seconds)


async def _chunk(conn: Connection, plan: _Plan, lo: int, hi: int) -> int:
    """Sessions lo..hi-1 with their loads and rollups, in one transaction; their events."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")  # steady plans
        await conn.execute(
            f"CREATE TEMP TABLE seed_chunk ON COMMIT DROP AS {_draws(plan.model)}",
            plan.seed_value,
            lo,
            hi,
            plan.end,
            plan.days * 86400.0,
            *plan.args,
        )
        await conn.execute(
            "CREATE TEMP TABLE seed_sessions (LIKE sessions INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        await conn.execute(
            "CREATE TEMP TABLE seed_loads (LIKE impressions INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        done = await conn.fetch(f"{_insert_played()} RETURNING event_count", plan.blocks)
        unplayed = await conn.fetchval(
            f"WITH x AS ({_insert_unplayed(plan.model)} RETURNING 1) SELECT count(*) FROM x",
            plan.blocks,
        )
        await conn.execute(_INSERT_LOADS, plan.seed_value)
        await conn.execute("INSERT INTO sessions SELECT * FROM seed_sessions")
        await conn.execute("INSERT INTO impressions SELECT * FROM seed_loads")
        for _, sql in statements("seed_sessions", "seed_loads", add=True):
            await conn.execute(sql)  # this chunk's sessions, counted into the rollups
    return int(sum(r[0] for r in done) + 2 * unplayed)


async def seed(
    connections: Sequence[Connection],
    model: Model,
    *,
    sessions: int,
    days: int,
    end: dt.datetime,
    seed_value: int,
    video_ids: Sequence[int],
    durations: Sequence[float],
    chunk: int = 100_000,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Insert `sessions` played sessions (plus the unplayed views and page loads that go
    with them) ending before `end`, and count them into the rollups; returns the number
    of raw events. Each chunk is one transaction (sessions, loads and their rollups
    together), and the connections work on chunks side by side."""
    conn = connections[0]
    blocks = [
        await conn.fetchval("SELECT nextval('session_ids')")
        for _ in range(-(-2 * sessions // SESSION_ID_BLOCK))
    ]
    args = [
        list(video_ids),
        list(durations),
        [b for _, b, _, _ in model.mix],
        [p for _, _, p, _ in model.mix],
        [d for _, _, _, d in model.mix],
        list(model.pages),
        len(video_ids),
        sessions,
    ]
    plan = _Plan(model, seed_value, end, days, blocks, args)
    counts: list[int] = []

    async def worker(conn: Connection, chunks: list[tuple[int, int]]) -> None:
        for lo, hi in chunks:
            counts.append(await _chunk(conn, plan, lo, hi))
            if progress is not None:
                progress(hi - lo)

    # each connection a stretch of time of its own: they meet at one bucket only
    bounds = [(lo, min(sessions, lo + chunk)) for lo in range(0, sessions, chunk)]
    share = -(-len(bounds) // len(connections))
    await asyncio.gather(
        *(worker(c, bounds[i * share : (i + 1) * share]) for i, c in enumerate(connections))
    )
    return sum(counts)


# -- the shape of the demo traffic ------------------------------------------------------
# (weight, browser, platform, device): a plausible mix of real-world traffic
MIX = [
    (30, "chrome", "windows", "desktop"),
    (12, "chrome", "mac", "desktop"),
    (18, "safari", "ios", "mobile"),
    (4, "safari", "ios", "tablet"),
    (8, "safari", "mac", "desktop"),
    (12, "chrome", "android", "mobile"),
    (2, "chrome", "android", "tablet"),
    (5, "firefox", "windows", "desktop"),
    (2, "firefox", "linux", "desktop"),
    (1, "chrome", "linux", "desktop"),
    (4, "edge", "windows", "desktop"),
    (1, "opera", "windows", "desktop"),
    (1, "brave", "mac", "desktop"),
    (0.3, "ie", "windows", "desktop"),
    (0.7, "other", "other", "other"),
]
assert all(b in BROWSERS and p in PLATFORMS and d in DEVICES for _, b, p, d in MIX)
PAGES = ["/", "/blog/launch", "/docs/getting-started", "/pricing", "/customers/story"]

MODEL = Model(
    mix=MIX,
    pages=PAGES,
    pieces=(1, 1, 1, 2, 2, 3, 4),  # play/pause pieces of the main run
    seek_rate=0.3,  # the main run starts after a seek
    second_run_rate=0.3,  # a second run after a seek
    run_seconds=45.0,
    pause_seconds=5.0,
    unplayed_loads=0.6,  # page loads that never play, per session that does (play rate ~62 %)
    # the share of views whose page uses the first-party client (the rest use
    # @maveio/metrics and report no QoE), and how often things go wrong for them
    qoe_share=0.4,
    stall_rate=0.2,
    exit_rate=0.03,  # extra views, per QoE view, requested and abandoned before start
    startup_failure_rate=0.008,  # extra views that failed before the first frame
    playback_failure_rate=0.005,  # views that failed mid-way
)


def videos(key: str, count: int) -> list[VideoRef]:
    return [
        VideoRef.of(key, None, {"video_id": f"seed-{i}", "title": f"Seed video {i}"})
        for i in range(count)
    ]


def durations(seed: int, count: int) -> list[float]:
    """Each seeded video's duration in seconds (20 s to 15 min)."""
    rng = random.Random(seed)
    return [rng.uniform(20, 900) for _ in range(count)]


async def seed_key(
    url: str,
    key: str,
    *,
    videos_count: int,
    sessions: int,
    days: int,
    seed_value: int,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Seed `sessions` sessions of `videos_count` demo videos under `key` (made if
    missing), ending at today's UTC midnight; returns the number of events."""
    # two connections fill chunks side by side (PostgreSQL does the work)
    conns = [await db.connect(url) for _ in range(min(2, os.cpu_count() or 1))]
    conn = conns[0]
    try:
        if key not in {k.key for k in await key_store.list_keys(conn)}:
            await key_store.insert_key(conn, key)
        refs = videos(key, videos_count)
        ids = await session_store.ensure_videos(conn, refs)
        end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        events = await seed(
            conns,
            MODEL,
            sessions=sessions,
            days=days,
            end=end,
            seed_value=seed_value,
            video_ids=[ids[(r.key, r.identity)] for r in refs],
            durations=durations(seed_value, videos_count),
            progress=progress,
        )
        await conn.execute("ANALYZE")  # fresh statistics for the planner
        return events
    finally:
        for c in conns:
            await c.close()

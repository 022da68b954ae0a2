"""The SQL that writes a batch of the ingest side's rows (app/model/rows.py) in one
transaction, and the retention that later drops them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.model import rollup
from app.model.rows import (
    Ended,
    EventRow,
    Impression,
    IntervalRow,
    Op,
    Outcome,
    Presence,
    SessionRow,
    StaleState,
    VideoIds,
    VideoRef,
    Written,
)
from app.storage import rollups, timeline
from app.storage.backend import Backend, dialect
from app.storage.driver import Connection, Pool
from app.storage.tables import SESSION_ID_BLOCK

QOE_SESSION_COLUMNS = [
    "qoe",
    "startup_ms",
    "rebuffer_count",
    "rebuffer_seconds",
    "seek_count",
    "seek_ms",
    "failure",
    "failed_before_start",
    "exited_before_start",
    "quick_exit",
    "upscale_max",
    "upscale_sum",
    "upscale_seconds",
]
_QOE = ", ".join(
    f"q{i}" for i in range(1, 1 + len(QOE_SESSION_COLUMNS))
)  # names of the unnested QoE columns
QOE_SESSION_TYPES = [
    *("bool", "float8", "int", "float8", "int", "float8", "int2", "bool", "bool"),
    *("bool", "float8", "float8", "float8"),
]


def session_ids(ops: Iterable[Op]) -> set[int]:
    """The sessions a batch touches."""
    return {
        op.id if isinstance(op, SessionRow) else op.session_id
        for op in ops
        if not isinstance(op, Impression)
    }


async def reserve_session_ids(conn: Connection | Pool) -> range:
    """A block of SESSION_ID_BLOCK fresh session ids."""
    first = await conn.fetchval("SELECT nextval('session_ids')")
    return range(first, first + SESSION_ID_BLOCK)


async def _resolve_videos(
    conn: Connection,
    refs: dict[tuple[str, str], VideoRef],
) -> dict[tuple[str, str], int]:
    if not refs:
        return {}
    items = list(refs.values())
    rows = await conn.fetch(
        """
        INSERT INTO videos (key, identity, identifier, metadata)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
        ON CONFLICT (key, identity) DO UPDATE SET identity = EXCLUDED.identity
        RETURNING key, identity, id
        """,
        [r.key for r in items],
        [r.identity for r in items],
        [r.identifier for r in items],
        [r.metadata for r in items],
    )
    return {(r["key"], r["identity"]): r["id"] for r in rows}


async def _copy_impressions(
    conn: Connection,
    rows: list[Impression],
    vid: Callable[[VideoRef], int],
    deltas: rollup.Deltas,
) -> None:
    await conn.copy_records_to_table(
        "impressions",
        columns=["video_id", "at", "browser", "platform", "device", "page", "session_data"],
        records=[
            (vid(i.video), i.at, i.browser, i.platform, i.device, i.page, i.session_data)
            for i in rows
        ],
    )
    for i in rows:
        deltas.impression(i.video.key, vid(i.video), i.at)


def _timelines(events: list[EventRow]) -> dict[int, tuple[dt.datetime, bytes, int]]:
    """session id -> (its start, the packed new events, how many), in submission order."""
    grouped: dict[int, list[EventRow]] = {}
    for e in events:
        grouped.setdefault(e.session_id, []).append(e)
    return {
        sid: (
            rows[0].session_started_at,
            timeline.encode(((e.at, e.name, e.payload) for e in rows), rows[0].session_started_at),
            len(rows),
        )
        for sid, rows in grouped.items()
    }


def _spans(intervals: list[IntervalRow]) -> dict[int, list[tuple[float, float]]]:
    """The watched media ranges of each session, in the order they came."""
    spans: dict[int, list[tuple[float, float]]] = {}
    for i in intervals:
        spans.setdefault(i.session_id, []).append((i.media_from, i.media_to))
    return spans


async def write_batch(
    conn: Connection,
    ops: list[Op],
    videos: VideoIds,
    outbox: bool = False,
    written: Written | None = None,
    shard: int | None = None,
) -> Outcome:
    """prepare_batch, then execute_batch: see those."""
    prepared = await prepare_batch(conn, ops, videos, outbox, written, shard)
    await execute_batch(conn, prepared)
    return prepared.outcome


@dataclass(slots=True)
class Prepared:
    """A batch's writes, ready to send (execute_batch), and what they will have written."""

    statement: rollups.Statement
    final: str | None  # the SELECT that finds vanished sessions, if sessions are written
    outcome: Outcome


@dataclass(slots=True)
class _Parts:
    """A batch's ops by kind, in submission order (a later snapshot of a session, or a
    later presence, replaces an earlier one)."""

    sessions: dict[int, SessionRow] = field(default_factory=dict)
    intervals: list[IntervalRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    presence: dict[int, Presence] = field(default_factory=dict)
    ended: list[Ended] = field(default_factory=list)
    impressions: list[Impression] = field(default_factory=list)

    @classmethod
    def of(cls, ops: list[Op]) -> _Parts:
        parts = cls()
        for op in ops:
            if isinstance(op, SessionRow):
                parts.sessions[op.id] = op
            elif isinstance(op, IntervalRow):
                parts.intervals.append(op)
            elif isinstance(op, EventRow):
                parts.events.append(op)
            elif isinstance(op, Presence):
                parts.presence[op.session_id] = op
            elif isinstance(op, Impression):
                parts.impressions.append(op)
            else:
                parts.ended.append(op)
        return parts


Stored = dict[int, tuple[rollup.State, int] | None]  # session -> (state, timeline bytes)
Packed = tuple[dt.datetime, bytes | None, int] | None  # a session's new timeline bytes


class _Batch:
    """What building one batch's writes shares: the connection (used only once the
    caller's `ready` is done), the video ids, the statement, the deltas, the outcome."""

    def __init__(
        self,
        conn: Connection,
        videos: VideoIds,
        ready: Awaitable[Any] | None,
    ) -> None:
        self._conn = conn
        self._ready = ready
        self._videos = videos
        self.found: dict[tuple[str, str], int] = {}
        self.statement = rollups.Statement()
        self.deltas = rollup.Deltas()
        self.outcome = Outcome(self.found, {})

    async def database(self) -> Connection:
        """The connection, once the caller lets this batch use it."""
        if self._ready is not None:
            await self._ready
            self._ready = None
        return self._conn

    async def resolve(self, ops: list[Op]) -> None:
        """Find (or create) the ids of videos not known yet."""
        wanted: dict[tuple[str, str], VideoRef] = {}
        for op in ops:
            if self._videos.get(op.video) is None:
                wanted[(op.video.key, op.video.identity)] = op.video
        if wanted:
            self.found.update(await _resolve_videos(await self.database(), wanted))

    def vid(self, ref: VideoRef) -> int:
        known = self._videos.get(ref)
        return known if known is not None else self.found[(ref.key, ref.identity)]

    async def stored(
        self, rows: list[SessionRow], written: Written | None
    ) -> tuple[Stored, set[int]]:
        """The stored state of these sessions (what they contribute to the rollups now)
        and the bytes of timeline their rows hold: known from `written`, or read (those
        read are the second value)."""
        old: Stored = {}
        unknown: list[SessionRow] = []
        for r in rows:
            known = written.get(r.id) if written is not None else None
            if known is None:
                unknown.append(r)
            else:
                old[r.id] = known
        if unknown:
            conn = await self.database()
            # FOR NO KEY UPDATE: a row another transaction is writing is read once that
            # one has ended, as it then is
            for rec in await conn.fetch(
                f"""
                    SELECT {rollups.STATE_COLUMNS}, coalesce(octet_length(s.events), 0) AS kept
                      FROM sessions s
                      JOIN unnest($1::bigint[], $2::timestamptz[]) AS u(id, t)
                        ON s.id = u.id AND s.started_at = u.t
                      JOIN videos v ON v.id = s.video_id
                     WHERE {_started_within(conn, unknown)}
                       FOR NO KEY UPDATE OF s
                    """,
                [r.id for r in unknown],
                [r.started_at for r in unknown],
            ):
                old[rec["id"]] = (rollups.state_of(rec), rec["kept"])
        return old, {r.id for r in unknown}


def _started_within(conn: Connection, rows: list[SessionRow]) -> str:
    """A condition on the sessions' start that TimescaleDB can exclude chunks by while it
    plans: it refuses to plan a row lock over a compressed chunk (sessions older than
    METRICS_COMPRESS_AFTER_DAYS), so the read-back names the time range as constants (the
    server's own timestamps, never client text). Plain PostgreSQL needs none."""
    if dialect(conn) is not Backend.TIMESCALEDB:
        return "TRUE"
    low = min(r.started_at for r in rows).astimezone(dt.UTC).isoformat()
    high = max(r.started_at for r in rows).astimezone(dt.UTC).isoformat()
    return f"s.started_at BETWEEN '{low}'::timestamptz AND '{high}'::timestamptz"


def _advance(
    rows: list[SessionRow],
    old: Stored,
    parts: _Parts,
    timelines: dict[int, tuple[dt.datetime, bytes, int]],
    vid: Callable[[VideoRef], int],
    into: _Batch,
) -> tuple[list[str], list[Packed]]:
    """The pure step: each session's new state from its stored one and this batch's
    snapshot and watched ranges, the rollup deltas between them, and where its new events
    go (into its row, or — past timeline.ROW_BYTES — left in `timelines` for an overflow
    row). Returns the merged islands (as float8[] literals) and the row's new events."""
    spans = _spans(parts.intervals)
    islands: list[str] = []
    packed: list[Packed] = [timelines.pop(r.id, None) for r in rows]
    for n, r in enumerate(rows):
        before = old.get(r.id)
        merged = rollup.merge_islands(
            list(before[0].islands) if before else None, spans.get(r.id, ())
        )
        islands.append("{" + ",".join(map(repr, merged)) + "}")
        state = r.state(vid(r.video), tuple(merged))
        into.deltas.change(before[0] if before else None, state)
        kept = before[1] if before else 0
        got = packed[n]
        if got is not None and got[1] is not None:
            if kept + len(got[1]) > timeline.ROW_BYTES:
                # a long timeline goes on in overflow rows: appending to the row would
                # rewrite all of it (past ~2 KB its TOAST copy) on every write
                timelines[r.id] = (got[0], got[1], got[2])  # written as an overflow row
                packed[n] = (got[0], None, got[2])
            else:
                kept += len(got[1])
        into.outcome.sessions[r.id] = (state, kept)
    return islands, packed


def _upsert_sessions(
    b: _Batch, rows: list[SessionRow], islands: list[str], packed: list[Packed], fetched: set[int]
) -> str:
    """The sessions' upsert; returns the SELECT that finds sessions believed stored (not
    read back) yet inserted afresh: their deltas were wrong (see StaleState)."""
    statement, vid = b.statement, b.vid
    qoe = [r.qoe_columns() for r in rows]
    columns = (
        ([r.id for r in rows], "bigint"),
        ([r.started_at for r in rows], "timestamptz"),
        ([vid(r.video) for r in rows], "bigint"),
        ([r.ended_at for r in rows], "timestamptz"),
        ([r.browser for r in rows], "text"),
        ([r.platform for r in rows], "text"),
        ([r.device for r in rows], "text"),
        ([r.page for r in rows], "text"),
        ([r.session_data for r in rows], "jsonb"),
        ([r.duration for r in rows], "float8"),
        ([r.watch_seconds for r in rows], "float8"),
        ([r.furthest for r in rows], "float8"),
        (islands, "text"),
        ([r.ended for r in rows], "bool"),
        ([r.played for r in rows], "bool"),
        *[([q[i] for q in qoe], t) for i, t in enumerate(QOE_SESSION_TYPES)],
        ([p[1] if p else None for p in packed], "bytea"),
        ([p[2] if p else 0 for p in packed], "int"),
    )
    arrays = ", ".join(statement.param(values, f"{t}[]") for values, t in columns)
    upsert = statement.add(
        f"""
        INSERT INTO sessions AS s (id, started_at, video_id, ended_at, browser, platform,
                              device, page, session_data, duration, watch_seconds, furthest,
                              islands, ended, played,
                              {", ".join(QOE_SESSION_COLUMNS)}, events, event_count)
        SELECT a, b, c, d, e, f, g, h, i, j, k, l, m::float8[], n, p, {_QOE}, ev, evn
          FROM unnest({arrays})
               AS u(a, b, c, d, e, f, g, h, i, j, k, l, m, n, p, {_QOE}, ev, evn)
        ON CONFLICT (id, started_at) DO UPDATE SET
            ended_at = EXCLUDED.ended_at, duration = EXCLUDED.duration,
            watch_seconds = EXCLUDED.watch_seconds, furthest = EXCLUDED.furthest,
            islands = EXCLUDED.islands, ended = EXCLUDED.ended, played = EXCLUDED.played,
            {", ".join(f"{c} = EXCLUDED.{c}" for c in QOE_SESSION_COLUMNS)},
            events = CASE WHEN EXCLUDED.events IS NULL THEN s.events
                          ELSE coalesce(s.events, ''::bytea) || EXCLUDED.events END,
            event_count = s.event_count + EXCLUDED.event_count
        RETURNING s.id, s.xmax = 0 AS inserted"""
    )
    return (
        f"SELECT id FROM {upsert} WHERE inserted AND id = ANY("
        f"{statement.param([r.id for r in rows if r.id not in fetched], 'bigint[]')})"
    )


def _overflow(
    statement: rollups.Statement,
    timelines: dict[int, tuple[dt.datetime, bytes, int]],
    sessions: dict[int, SessionRow],
) -> None:
    """Overflowing timelines of the batch's sessions: one row each (counted by the
    sessions' upsert); taken out of `timelines`."""
    overflow = [sid for sid in timelines if sid in sessions]
    if overflow:
        statement.add(
            f"""
            INSERT INTO session_events (session_id, session_started_at, events)
            SELECT * FROM unnest({statement.param(overflow, "bigint[]")},
                {statement.param([timelines[sid][0] for sid in overflow], "timestamptz[]")},
                {statement.param([timelines.pop(sid)[1] for sid in overflow], "bytea[]")})
            """
        )


def _presence(b: _Batch, moves: list[Presence]) -> None:
    """One upsert for both ways: a session that stops keeps its row, dated -infinity (not
    watching; the row is deleted later by touch_playing), so play/pause flips update one
    row in place instead of inserting and deleting index entries every time."""
    statement = b.statement
    statement.add(
        f"""
        INSERT INTO playing AS pl (session_id, video_id, session_started_at, last_seen)
        SELECT s, v, t, CASE WHEN p THEN now() ELSE '-infinity' END FROM unnest(
            {statement.param([m.session_id for m in moves], "bigint[]")},
            {statement.param([b.vid(m.video) for m in moves], "bigint[]")},
            {statement.param([m.session_started_at for m in moves], "timestamptz[]")},
            {statement.param([m.playing for m in moves], "bool[]")}) AS u(s, v, t, p)
        ON CONFLICT (session_id) DO UPDATE SET last_seen = EXCLUDED.last_seen
        """
    )


def _outbox(statement: rollups.Statement, ended: list[Ended]) -> None:
    statement.add(
        f"""
        INSERT INTO export_outbox (session_id, session_started_at)
        SELECT * FROM unnest(
            {statement.param([e.session_id for e in ended], "bigint[]")},
            {statement.param([e.session_started_at for e in ended], "timestamptz[]")})
        ON CONFLICT (session_id) DO NOTHING
        """
    )


async def prepare_batch(
    conn: Connection,
    ops: list[Op],
    videos: VideoIds,
    outbox: bool = False,
    written: Written | None = None,
    shard: int | None = None,
    ready: Awaitable[Any] | None = None,
) -> Prepared:
    """Write ops (in submission order) inside one transaction; the caller commits.
    outbox=True: ended sessions also go into the export webhook's outbox. `written`: what
    the caller knows it committed of these sessions (read from the database otherwise).
    `shard`: the rollup shard to add to (None: the connection's; see rollups.SHARDS).

    What is read (video ids, the state of sessions not in `written`) is read here, and
    page loads and the events of sessions without a snapshot are written — after awaiting
    `ready`, if given, and only if there is any — everything else is one statement for
    execute_batch. The outcome holds the video ids resolved on the way
    and the sessions' new states, for the caller to cache after commit."""
    parts = _Parts.of(ops)
    b = _Batch(conn, videos, ready)
    await b.resolve(ops)
    timelines = _timelines(parts.events)
    final: str | None = None
    if parts.sessions:
        rows = list(parts.sessions.values())
        old, fetched = await b.stored(rows, written)
        islands, packed = _advance(rows, old, parts, timelines, b.vid, b)
        final = _upsert_sessions(b, rows, islands, packed, fetched)
        _overflow(b.statement, timelines, parts.sessions)
    if timelines:  # events of sessions without a snapshot in this batch
        await append_events(await b.database(), timelines)
    if parts.impressions:
        await _copy_impressions(await b.database(), parts.impressions, b.vid, b.deltas)
    rollups.add_deltas(b.statement, b.deltas, shard)
    if parts.presence:
        _presence(b, list(parts.presence.values()))
    if outbox and parts.ended:
        _outbox(b.statement, parts.ended)
    for e in parts.ended:
        b.outcome.sessions[e.session_id] = None
    return Prepared(b.statement, final, b.outcome)


async def execute_batch(conn: Connection, prepared: Prepared) -> None:
    """Send a prepared batch's writes, in one round trip. Raises StaleState when a session
    the caller believed stored had no row."""
    statement = prepared.statement
    if prepared.final is None:
        await statement.execute(conn)
        return
    vanished = await conn.fetch(statement.sql(prepared.final), *statement.args)
    if vanished:
        raise StaleState([rec["id"] for rec in vanished])


async def append_events(
    conn: Connection, timelines: dict[int, tuple[dt.datetime, bytes, int]]
) -> None:
    """Add packed events to the timelines of existing sessions, as overflow rows (one per
    session and write; see timeline.ROW_BYTES), and count them in event_count."""
    await conn.copy_records_to_table(
        "session_events",
        columns=["session_id", "session_started_at", "events"],
        records=[(sid, t[0], t[1]) for sid, t in timelines.items()],
    )
    await conn.execute(
        """
        UPDATE sessions s SET event_count = s.event_count + u.n
          FROM unnest($1::bigint[], $2::timestamptz[], $3::int[]) AS u(id, t, n)
         WHERE s.id = u.id AND s.started_at = u.t
        """,
        list(timelines),
        [t[0] for t in timelines.values()],
        [t[2] for t in timelines.values()],
    )


async def touch_playing(conn: Connection | Pool, session_ids: list[int]) -> None:
    """Refresh presence for the sessions this process is playing; drop long-dead rows.

    Rows a write in flight holds are skipped (SKIP LOCKED): that write dates them itself,
    and this statement must never wait for a batch of the writer's pipeline, which may be
    waiting, outside the database's sight, for a batch that waits for this statement."""
    if session_ids:
        await conn.execute(
            """
            UPDATE playing SET last_seen = now()
             WHERE session_id IN (SELECT session_id FROM playing
                                   WHERE session_id = ANY($1::bigint[])
                                     AND last_seen > '-infinity'  -- a stop stays a stop
                                     FOR UPDATE SKIP LOCKED)
            """,
            session_ids,
        )
    await conn.execute(
        """
        DELETE FROM playing WHERE session_id IN (
            SELECT session_id FROM playing WHERE last_seen < now() - interval '1 hour'
               FOR UPDATE SKIP LOCKED)
        """
    )


async def ensure_videos(conn: Connection, refs: list[VideoRef]) -> dict[tuple[str, str], int]:
    return await _resolve_videos(conn, {(r.key, r.identity): r for r in refs})


async def copy_rows(
    conn: Connection,
    ids: dict[tuple[str, str], int],
    sessions: list[SessionRow],
    intervals: list[IntervalRow],
    events: list[EventRow],
    pending: rollup.Deltas | None = None,
    impressions: list[Impression] | None = None,
) -> None:
    """Bulk-load finished sessions (seeding, imports) with COPY, and count them into the
    rollups in the same transaction — or into `pending`, for a bulk load that writes its
    accumulated rollup deltas itself (fewer, larger upserts)."""

    def vid(ref: VideoRef) -> int:
        return ids[(ref.key, ref.identity)]

    spans = _spans(intervals)
    deltas = rollup.Deltas() if pending is None else pending
    timelines = _timelines(events)
    records = []
    for s in sessions:
        merged = rollup.merge_islands(None, spans.get(s.id, ()))
        video_id = vid(s.video)
        deltas.add(s.state(video_id, tuple(merged)), +1)
        packed = timelines.pop(s.id, None)
        records.append(
            (
                *(s.id, s.started_at, video_id, s.ended_at, s.browser, s.platform, s.device),
                *(s.page, s.session_data, s.duration, s.watch_seconds, s.furthest, merged),
                *(s.ended, s.played, *s.qoe_columns()),
                packed[1] if packed else None,
                packed[2] if packed else 0,
            )
        )
    await conn.copy_records_to_table("sessions", columns=COPY_COLUMNS, records=records)
    if timelines:
        await append_events(conn, timelines)
    if impressions:
        await _copy_impressions(conn, impressions, vid, deltas)
    if pending is None:
        await rollups.write_deltas(conn, deltas)


# the sessions columns a bulk load writes, in the order of its records
COPY_COLUMNS = [
    *"id started_at video_id ended_at browser platform device page session_data".split(),
    *"duration watch_seconds furthest islands ended played".split(),
    *QOE_SESSION_COLUMNS,
    "events",
    "event_count",
]
RAW_DROP_BATCH = 10_000  # sessions per UPDATE when raw events expire (short row locks)


async def drop_raw_events(pool: Pool, days: int, now: dt.datetime | None = None) -> int:
    """Forget the raw events of sessions that started more than `days` before `now`
    (default: the database's clock; days 0: keep); their summaries, and so every answer,
    stay. Returns how many timelines were dropped."""
    dropped = 0
    while days > 0:
        async with pool.acquire() as conn:
            done = await conn.execute(
                """
                UPDATE sessions s SET events = NULL
                  FROM (SELECT id, started_at FROM sessions
                         WHERE started_at < coalesce($3, now()) - make_interval(days => $1)
                           AND events IS NOT NULL LIMIT $2
                           FOR NO KEY UPDATE SKIP LOCKED) old  -- see touch_playing
                 WHERE s.id = old.id AND s.started_at = old.started_at
                """,
                days,
                RAW_DROP_BATCH,
                now,
            )
        count = int(done.split()[-1])
        dropped += count
        if count < RAW_DROP_BATCH:
            break
    if days > 0:
        async with pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM session_events "
                "WHERE session_started_at < coalesce($2, now()) - make_interval(days => $1)",
                days,
                now,
            )
    return dropped


async def apply_retention(pool: Pool, days: int, raw_event_days: int) -> None:
    """Delete data older than the retention settings (0 keeps forever); on TimescaleDB
    its retention policies do the deleting, and only drop_raw_events runs."""
    await drop_raw_events(pool, raw_event_days)
    async with pool.acquire() as conn:
        if days > 0:
            await conn.execute(
                "DELETE FROM sessions WHERE started_at < now() - make_interval(days => $1)", days
            )
            await conn.execute(
                "DELETE FROM session_events WHERE session_started_at "
                "< now() - make_interval(days => $1)",
                days,
            )
            # rollup buckets wholly before the horizon (the query clamps to it anyway)
            await conn.execute(
                "DELETE FROM impressions WHERE at < now() - make_interval(days => $1)", days
            )
            for table in (*rollups.ROLLUP_TABLES, "engagement_cache"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE bucket < now() - make_interval(days => $1) "
                    "- interval '15 minutes'",
                    days,
                )

"""SQL for the query API. Statements are assembled from constant fragments chosen by which
filters are present; every value arrives as a `$n` parameter.

Buckets are computed on local time (`started_at AT TIME ZONE tz`): fixed-width spans with
`time_bucket` on TimescaleDB and `date_bin` elsewhere (same origin, so identical buckets),
month spans with calendar arithmetic on both.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.model import BucketQuery, EngagementQuery, Selection, Window

ORIGIN = "timestamp '2000-01-03 00:00:00'"  # a Monday: week buckets start on Mondays
MONTH_ORIGIN_YEAR = 2000


class Params:
    """Collects values and hands out their $n placeholders."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


def video_filter(sel: Selection, p: Params, column: str) -> list[str]:
    conditions = []
    if sel.key is not None:
        conditions.append(f"key = {p.add(sel.key, 'text')}")
    if sel.video is not None:
        conditions.append(f"metadata @> {p.add(sel.video, 'jsonb')}")
    if sel.identifier is not None:
        conditions.append(f"identifier = {p.add(sel.identifier, 'text')}")
    if not conditions:
        return []
    return [f"{column} IN (SELECT id FROM videos WHERE {' AND '.join(conditions)})"]


def session_filters(sel: Selection, window: Window, p: Params, alias: str = "s") -> list[str]:
    conditions = video_filter(sel, p, f"{alias}.video_id")
    conditions.append(f"{alias}.started_at >= {p.add(window.start, 'timestamptz')}")
    conditions.append(f"{alias}.started_at < {p.add(window.end, 'timestamptz')}")
    if sel.session is not None:
        conditions.append(f"{alias}.session_data @> {p.add(sel.session, 'jsonb')}")
    return conditions


def _bucket(q: BucketQuery, p: Params, timescale: bool) -> str:
    local = f"(s.started_at AT TIME ZONE {p.add(q.timezone, 'text')})"
    if q.interval.months:
        months = p.add(q.interval.months, "int")
        index = (f"((extract(year FROM {local})::int - {MONTH_ORIGIN_YEAR}) * 12 "
                 f"+ extract(month FROM {local})::int - 1)")
        return (f"(timestamp '{MONTH_ORIGIN_YEAR}-01-01' + make_interval(months => "
                f"(floor({index}::numeric / {months}) * {months})::int))")
    width = p.add(dt.timedelta(seconds=q.interval.seconds), "interval")
    if timescale:
        return f"time_bucket({width}, {local}, {ORIGIN})"
    return f"date_bin({width}, {local}, {ORIGIN})"


@dataclass(frozen=True, slots=True)
class PlaysRow:
    bucket: dt.datetime
    browser: str
    platform: str
    device: str
    views: int
    watch_seconds: float


async def plays(conn: asyncpg.Connection, q: BucketQuery, timescale: bool) -> list[PlaysRow]:
    p = Params()
    bucket = _bucket(q, p, timescale)
    where = session_filters(q.selection, q.window, p)
    where.append(f"s.watch_seconds >= {p.add(q.minimum_watch_seconds, 'float8')}")
    rows = await conn.fetch(
        f"""
        SELECT {bucket} AS bucket, s.browser, s.platform, s.device,
               count(*) AS views, sum(s.watch_seconds) AS watch_seconds
          FROM sessions s
         WHERE {' AND '.join(where)}
         GROUP BY 1, 2, 3, 4
         ORDER BY 1
        """,
        *p.values,
    )
    return [PlaysRow(*r) for r in rows]


async def sources(conn: asyncpg.Connection, q: BucketQuery,
                  timescale: bool) -> list[tuple[dt.datetime, str, int]]:
    p = Params()
    bucket = _bucket(q, p, timescale)
    where = session_filters(q.selection, q.window, p)
    where.append(f"s.watch_seconds >= {p.add(q.minimum_watch_seconds, 'float8')}")
    where.append("s.page IS NOT NULL")
    rows = await conn.fetch(
        f"""
        SELECT {bucket} AS bucket, s.page, count(*) AS views
          FROM sessions s
         WHERE {' AND '.join(where)}
         GROUP BY 1, 2
         ORDER BY 1, 3 DESC, 2
        """,
        *p.values,
    )
    return [(r["bucket"], r["page"], r["views"]) for r in rows]


async def engagement(conn: asyncpg.Connection,
                     q: EngagementQuery) -> tuple[float | None, dict[int, int]]:
    """(timeline length, {range index: viewers}); length None when nothing was watched.

    Each interval becomes a span of range indexes; a session's overlapping spans are merged
    (gaps and islands), so every range is covered at most once per session. Viewers per
    range are then a running sum of +1/-1 at span edges: no per-range expansion, no
    DISTINCT, linear in the number of intervals.
    """
    p = Params()
    where = session_filters(q.selection, q.window, p)
    start, end = p.add(q.window.start, "timestamptz"), p.add(q.window.end, "timestamptz")
    ranges = p.add(q.ranges, "int")
    rows = await conn.fetch(
        f"""
        WITH sel AS MATERIALIZED (
            SELECT s.id, s.started_at, s.duration, s.furthest
              FROM sessions s
             WHERE {' AND '.join(where)}
        ), len AS (
            SELECT coalesce(max(duration), max(furthest)) AS total FROM sel
        ), spans AS (
            SELECT i.session_id,
                   greatest(0, floor(i.media_from / (len.total / {ranges})))::int AS first,
                   least({ranges} - 1,
                         ceil(i.media_to / (len.total / {ranges}))::int - 1) AS last
              FROM watch_intervals i
              JOIN sel ON sel.id = i.session_id AND sel.started_at = i.session_started_at
             CROSS JOIN len
             WHERE i.media_to > i.media_from AND len.total > 0
               -- the same time range as sel: lets TimescaleDB skip (and not decompress)
               -- chunks outside it; on plain PostgreSQL it narrows the index scan
               AND i.session_started_at >= {start} AND i.session_started_at < {end}
        ), ordered AS (
            SELECT session_id, first, last,
                   max(last) OVER (PARTITION BY session_id ORDER BY first, last
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
              FROM spans WHERE last >= first
        ), islands AS (
            SELECT session_id, first, last,
                   count(*) FILTER (WHERE reach IS NULL OR first > reach)
                       OVER (PARTITION BY session_id ORDER BY first, last) AS island
              FROM ordered
        ), merged AS (
            SELECT min(first) AS first, max(last) AS last
              FROM islands GROUP BY session_id, island
        )
        SELECT -1 AS edge, 0::bigint AS delta, (SELECT total FROM len) AS total
        UNION ALL
        SELECT first, count(*), NULL FROM merged GROUP BY first
        UNION ALL
        SELECT last + 1, -count(*), NULL FROM merged GROUP BY last + 1
        """,
        *p.values,
    )
    total = next((r["total"] for r in rows if r["edge"] == -1), None)
    deltas: dict[int, int] = {}
    for r in rows:
        if r["edge"] >= 0:
            deltas[r["edge"]] = deltas.get(r["edge"], 0) + r["delta"]
    counts, running = {}, 0
    for index in range(q.ranges):
        running += deltas.get(index, 0)
        if running:
            counts[index] = running
    return (total if total and total > 0 else None), counts


async def watching(conn: asyncpg.Connection, sel: Selection, ttl_seconds: float) -> int:
    p = Params()
    where = video_filter(sel, p, "pl.video_id")
    where.append(f"pl.last_seen > now() - {p.add(dt.timedelta(seconds=ttl_seconds), 'interval')}")
    if sel.session is not None:
        where.append(
            "EXISTS (SELECT 1 FROM sessions s WHERE s.id = pl.session_id "
            "AND s.started_at = pl.session_started_at "
            f"AND s.session_data @> {p.add(sel.session, 'jsonb')})"
        )
    value = await conn.fetchval(
        f"SELECT count(*) FROM playing pl WHERE {' AND '.join(where)}", *p.values
    )
    return int(value or 0)

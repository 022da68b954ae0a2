"""Views per bucket (with their page loads), the most viewed videos, and who is watching."""

from __future__ import annotations

import datetime as dt

from app.model import rollup
from app.model.query import BucketQuery, Selection, Window
from app.model.results import PlaysBucket, VideoTotals
from app.storage.backend import dialect
from app.storage.driver import Connection
from app.storage.stats.common import (
    bucket,
    by_plan,
    plays_plan,
    rollup_where,
    sessions_where,
)
from app.storage.where import Params, where

Buckets = dict[dt.datetime, PlaysBucket]


def _entry(into: Buckets, at: dt.datetime) -> PlaysBucket:
    return into.get(at) or into.setdefault(at, PlaysBucket(at))


async def plays(conn: Connection, q: BucketQuery, use_rollups: bool = True) -> list[PlaysBucket]:
    """Views per bucket: whole 15-minute buckets from the rollup, the partial edges of the
    window (and anything the rollup cannot answer exactly) from the sessions table."""
    out: Buckets = {}
    cls, whole = plays_plan(q, use_rollups)

    async def raw(windows: list[Window]) -> None:
        await _plays_raw(conn, q, windows, out)
        await _impressions_raw(conn, q, windows, out)

    async def from_rollups(inside: Window) -> None:
        await _plays_rollup(conn, q, cls, inside, out)
        await _impressions_rollup(conn, q, inside, out)

    await by_plan(q.window, whole, raw, from_rollups)
    return [out[b] for b in sorted(out) if out[b].views > 0 or out[b].impressions > 0]


async def _plays_raw(
    conn: Connection, q: BucketQuery, windows: list[Window], into: Buckets
) -> None:
    p = Params()
    at = bucket(q, p, dialect(conn))
    rows = await conn.fetch(
        f"""
        SELECT {at} AS bucket, s.browser, s.platform, s.device,
               count(*) AS views, sum(s.watch_seconds) AS watch_seconds
          FROM sessions s
         WHERE {where(sessions_where(q, p, windows))}
         GROUP BY 1, 2, 3, 4
        """,
        *p.values,
    )
    for r in rows:
        entry = _entry(into, r["bucket"])
        entry.views += r["views"]
        entry.watch_seconds += r["watch_seconds"]
        entry.count(r["browser"], r["platform"], r["device"], r["views"])


async def _plays_rollup(
    conn: Connection, q: BucketQuery, cls: int, inside: Window, into: Buckets
) -> None:
    p = Params()
    at = bucket(q, p, dialect(conn), "r.bucket")
    table, conditions = rollup_where(q, p, "plays", inside, cls)
    sums = ", ".join(f"sum(r.{c})" for c in rollup.BREAKDOWN_COLUMNS)
    rows = await conn.fetch(
        f"""
        SELECT {at} AS bucket, sum(r.sessions) AS views, sum(r.watch_seconds) AS watch,
               {sums}
          FROM {table} r
         WHERE {where(conditions)}
         GROUP BY 1
        HAVING sum(r.sessions) > 0
        """,
        *p.values,
    )
    for r in rows:
        entry = _entry(into, r["bucket"])
        entry.views += r["views"]
        entry.watch_seconds += r["watch"]
        for i in range(len(rollup.BREAKDOWN_COLUMNS)):
            entry.counts[i] += r[3 + i]


async def _impressions_raw(
    conn: Connection, q: BucketQuery, windows: list[Window], into: Buckets
) -> None:
    p = Params()
    at = bucket(q, p, dialect(conn), "i.at")
    conditions = [
        *p.videos(q.selection, "i.video_id"),
        p.within("i.at", windows),
        *p.session_data(q.selection, "i"),
    ]
    for r in await conn.fetch(
        f"SELECT {at} AS bucket, count(*) AS n FROM impressions i "
        f"WHERE {where(conditions)} GROUP BY 1",
        *p.values,
    ):
        _entry(into, r["bucket"]).impressions += r["n"]


async def _impressions_rollup(
    conn: Connection, q: BucketQuery, inside: Window, into: Buckets
) -> None:
    p = Params()
    at = bucket(q, p, dialect(conn), "r.bucket")
    table, conditions = rollup_where(q, p, "impressions", inside)
    for r in await conn.fetch(
        f"SELECT {at} AS bucket, sum(r.impressions) AS n "
        f"FROM {table} r WHERE {where(conditions)} GROUP BY 1",
        *p.values,
    ):
        _entry(into, r["bucket"]).impressions += int(r["n"])


# -- top videos -------------------------------------------------------------------------
async def videos(
    conn: Connection, q: BucketQuery, limit: int, use_rollups: bool = True
) -> list[VideoTotals]:
    """The most viewed videos of the selection in the window (views, watch seconds)."""
    totals: dict[int, list[float]] = {}
    cls, whole = plays_plan(q, use_rollups)

    async def add(sql: str, p: Params) -> None:
        for r in await conn.fetch(sql, *p.values):
            entry = totals.setdefault(r["video_id"], [0, 0.0])
            entry[0] += r["n"]
            entry[1] += r["w"]

    async def raw(windows: list[Window]) -> None:
        p = Params()
        await add(
            f"SELECT s.video_id, count(*) AS n, sum(s.watch_seconds) AS w FROM sessions s "
            f"WHERE {where(sessions_where(q, p, windows))} GROUP BY 1",
            p,
        )

    async def from_rollups(inside: Window) -> None:
        p = Params()
        conditions = [  # per video, even for a whole key
            *p.videos(q.selection, "r.video_id"),
            *p.between("r.bucket", inside),
            f"r.class >= {p.add(cls, 'int')}",
        ]
        await add(
            f"SELECT r.video_id, sum(r.sessions) AS n, sum(r.watch_seconds) AS w "
            f"FROM rollup_plays r WHERE {where(conditions)} GROUP BY 1",
            p,
        )

    await by_plan(q.window, whole, raw, from_rollups)
    ranked = sorted(
        ((v, t) for v, t in totals.items() if t[0] > 0),
        key=lambda item: (-item[1][0], -item[1][1], item[0]),
    )[:limit]
    if not ranked:
        return []
    info = {
        r["id"]: r
        for r in await conn.fetch(
            "SELECT id, identifier, metadata FROM videos WHERE id = ANY($1::bigint[])",
            [v for v, _ in ranked],
        )
    }
    return [
        VideoTotals(v, info[v]["identifier"], info[v]["metadata"], int(t[0]), t[1])
        for v, t in ranked
    ]


async def watching(conn: Connection, sel: Selection, ttl_seconds: float) -> int:
    """Sessions of the selection playing now (seen within the presence TTL)."""
    p = Params()
    conditions = p.videos(sel, "pl.video_id")
    conditions.append(
        f"pl.last_seen > now() - {p.add(dt.timedelta(seconds=ttl_seconds), 'interval')}"
    )
    if sel.session is not None:
        conditions.append(
            "EXISTS (SELECT 1 FROM sessions s WHERE s.id = pl.session_id "
            "AND s.started_at = pl.session_started_at "
            f"AND s.session_data @> {p.add(sel.session, 'jsonb')})"
        )
    value = await conn.fetchval(
        f"SELECT count(*) FROM playing pl WHERE {where(conditions)}", *p.values
    )
    return int(value or 0)

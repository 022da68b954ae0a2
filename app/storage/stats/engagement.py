"""Which parts of a video were watched: the timeline cut into `ranges` equal parts, and
per part the sessions that watched any of it.

Whole 15-minute buckets: from the engagement rollup when every selected session reported
the same duration (the usual case for one video) and `ranges` is one the rollup keeps;
for all videos of a key (durations differ), from the engagement cache, bucket by bucket,
recomputing only buckets whose sessions changed since. The window's partial edges, and
everything else, from the sessions' watched ranges (the raw path, the reference).
"""

from __future__ import annotations

import datetime as dt

from app.model import rollup
from app.model.query import BucketQuery, EngagementQuery, Selection, Span, Window
from app.model.results import Engagement
from app.storage import rollups
from app.storage.driver import Connection, Record
from app.storage.stats.common import edges, inner, whole_key
from app.storage.stats.plays import plays
from app.storage.where import Params, where

Found = Engagement | None  # None: ask the raw path


async def engagement(conn: Connection, q: EngagementQuery, use_rollups: bool = True) -> Engagement:
    """(timeline length, {range index: viewers}); length None when nothing was watched."""
    whole = inner(q.window)
    if not use_rollups or whole is None or q.selection.session is not None:
        return await _raw(conn, q, q.window, None)
    around = edges(q.window, whole)
    if whole_key(q.selection):
        found = await _of_key(conn, q, whole, around)
    else:
        durations = await _durations(conn, q.selection, whole, around)
        found = await _single_length(conn, q, whole, durations)
    if found is None:
        return await _raw(conn, q, q.window, None)
    length, counts = found
    if length is None:
        return None, {}
    for window in around:
        _, more = await _raw(conn, q, window, length)
        for index, viewers in more.items():
            counts[index] = counts.get(index, 0) + viewers
    return length, {i: c for i, c in sorted(counts.items()) if c}


async def _single_length(
    conn: Connection, q: EngagementQuery, whole: Window, durations: set[float]
) -> Found:
    """From the per-video engagement rollup, when the sessions share one known duration."""
    if not durations:
        return None, {}
    if (
        len(durations) == 1
        and (length := next(iter(durations))) > 0
        and q.ranges in rollup.ENGAGEMENT_RANGES
    ):
        return length, await _from_rollup(conn, q, whole, length)
    return None


def _rollup_durations(sel: Selection, p: Params, whole: Window) -> list[str]:
    return [
        *p.videos(sel, "r.video_id"),
        *p.between("r.bucket", whole),
        # the rows for the fewest ranges hold every session too
        f"r.ranges = {rollup.ENGAGEMENT_RANGES[0]}",
    ]


async def _durations(
    conn: Connection, sel: Selection, whole: Window | None, around: list[Window]
) -> set[float]:
    """The durations the selected played sessions reported (UNKNOWN_DURATION: none), from
    the engagement rollup over `whole` and from the sessions in `around`."""
    durations: set[float] = set()
    if whole is not None:
        p = Params()
        durations = {
            r["duration"]
            for r in await conn.fetch(
                f"SELECT r.duration FROM rollup_engagement r "
                f"WHERE {where(_rollup_durations(sel, p, whole))} "
                f"GROUP BY 1 HAVING sum(r.sessions) > 0",
                *p.values,
            )
        }
    for edge in around:  # one plain time range each: index-friendly
        p = Params()
        conditions = [*p.videos(sel, "s.video_id"), p.within("s.started_at", [edge]), "s.played"]
        durations |= {
            r[0]
            for r in await conn.fetch(
                f"SELECT DISTINCT CASE WHEN s.duration > 0 THEN s.duration "
                f"ELSE {rollup.UNKNOWN_DURATION} END FROM sessions s WHERE {where(conditions)}",
                *p.values,
            )
        }
    return durations


async def _from_rollup(
    conn: Connection, q: EngagementQuery, whole: Window, length: float
) -> dict[int, int]:
    p = Params()
    conditions = [
        *p.videos(q.selection, "r.video_id"),
        *p.between("r.bucket", whole),
        f"r.ranges = {p.add(q.ranges, 'int')}",
        f"r.duration = {p.add(length, 'float8')}",
    ]
    counts: dict[int, int] = {}
    for r in await conn.fetch(
        f"SELECT u.i - 1 AS i, sum(u.c) AS c FROM rollup_engagement r, "
        f"unnest(r.counts) WITH ORDINALITY AS u(c, i) WHERE {where(conditions)} "
        f"GROUP BY 1",
        *p.values,
    ):
        if r["c"]:
            counts[r["i"]] = int(r["c"])
    return counts


# -- all videos of a key: the engagement cache -------------------------------------------
async def _of_key(
    conn: Connection, q: EngagementQuery, whole: Window, around: list[Window]
) -> Found:
    """All videos of a key over the whole buckets of `whole`. Per bucket, the cache holds
    the bucket's durations and its counts for (ranges, length), valid while the bucket's
    change count (rollup_key_plays.changes, summed) is the one they were computed at;
    whatever is missing or stale is computed (durations from the engagement rollup,
    counts from raw rows) in the same snapshot, and cached."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        versions = await _versions(conn, q, whole)
        valid = [
            r for r in await _cached(conn, q, whole) if versions.get(r["bucket"]) == r["version"]
        ]
        by_bucket: dict[dt.datetime, set[float]] = {r["bucket"]: set(r["durations"]) for r in valid}
        missing = [b for b in versions if b not in by_bucket]
        if missing:
            await _bucket_durations(conn, q.selection, whole, missing, by_bucket)
        durations = set().union(*by_bucket.values()) | await _durations(
            conn, q.selection, None, around
        )
        known = [d for d in durations if d > 0]
        if not known or len(durations) == 1:
            return await _single_length(conn, q, whole, durations)
        length = max(known)  # the raw length: max(duration), NULLs (and 0) aside
        cached = {r["bucket"]: r["counts"] for r in valid if r["length"] == length}
        stale = sorted(b for b in versions if b not in cached)
        fresh = await _recount(conn, q, stale, length) if stale else {}
    if stale:
        await _store(conn, q, length, {b: (versions[b], fresh[b]) for b in stale}, by_bucket)
    totals = [0] * q.ranges
    for at in versions:
        for i, c in enumerate(fresh[at] if at in fresh else cached[at]):
            totals[i] += c
    return length, {i: c for i, c in enumerate(totals) if c}


async def _versions(conn: Connection, q: EngagementQuery, whole: Window) -> dict[dt.datetime, int]:
    """The change count of each bucket of the key that holds sessions."""
    return {
        r["bucket"]: r["v"]
        for r in await conn.fetch(
            "SELECT bucket, sum(changes)::int8 AS v FROM rollup_key_plays "
            "WHERE key = $1 AND bucket >= $2 AND bucket < $3 GROUP BY bucket HAVING "
            "sum(sessions) > 0",
            q.selection.key,
            whole.start,
            whole.end,
        )
    }


async def _cached(conn: Connection, q: EngagementQuery, whole: Window) -> list[Record]:
    return await conn.fetch(
        "SELECT bucket, length, version, counts, durations FROM engagement_cache "
        "WHERE key = $1 AND ranges = $2 AND bucket >= $3 AND bucket < $4",
        q.selection.key,
        q.ranges,
        whole.start,
        whole.end,
    )


async def _bucket_durations(
    conn: Connection,
    sel: Selection,
    whole: Window,
    missing: list[dt.datetime],
    into: dict[dt.datetime, set[float]],
) -> None:
    """The durations of the `missing` buckets' sessions, from the engagement rollup."""
    p = Params()
    conditions = _rollup_durations(sel, p, whole)
    conditions.append(f"r.bucket = ANY({p.add(missing, 'timestamptz[]')})")
    for r in await conn.fetch(
        f"SELECT r.bucket, r.duration FROM rollup_engagement r "
        f"WHERE {where(conditions)} GROUP BY 1, 2 HAVING sum(r.sessions) > 0",
        *p.values,
    ):
        into.setdefault(r["bucket"], set()).add(r["duration"])


async def _recount(
    conn: Connection, q: EngagementQuery, stale: list[dt.datetime], length: float
) -> dict[dt.datetime, list[int]]:
    """What the raw path says for these buckets: viewers per range, per bucket."""
    grain = dt.timedelta(seconds=rollup.GRAIN_SECONDS)
    deltas: dict[dt.datetime, dict[int, int]] = {}
    for r in await _raw_edges(conn, q, Window(stale[0], stale[-1] + grain), length, True):
        per = deltas.setdefault(r["bucket"], {})
        per[r["edge"]] = per.get(r["edge"], 0) + r["delta"]
    return {b: _running(deltas.get(b, {}), q.ranges) for b in stale}


async def _store(
    conn: Connection,
    q: EngagementQuery,
    length: float,
    entries: dict[dt.datetime, tuple[int, list[int]]],
    durations: dict[dt.datetime, set[float]],
) -> None:
    """Cache {bucket: (version, counts)}; an entry is kept unless a newer one got there
    first (change counts only grow)."""
    stale = list(entries)
    await conn.execute(
        """
        INSERT INTO engagement_cache AS c (key, ranges, length, bucket, version, counts,
                                           durations)
        SELECT $1, $2, $3, u.b, u.v, u.c::int[], u.d::float8[]
          FROM unnest($4::timestamptz[], $5::int8[], $6::text[], $7::text[])
               AS u(b, v, c, d)
        ON CONFLICT (key, ranges, length, bucket) DO UPDATE
           SET version = EXCLUDED.version, counts = EXCLUDED.counts,
               durations = EXCLUDED.durations
         WHERE c.version < EXCLUDED.version
        """,
        q.selection.key,
        q.ranges,
        length,
        stale,
        [entries[b][0] for b in stale],
        ["{" + ",".join(map(str, entries[b][1])) + "}" for b in stale],
        ["{" + ",".join(map(repr, sorted(durations.get(b, ())))) + "}" for b in stale],
    )


# -- the raw path -------------------------------------------------------------------------
def _running(deltas: dict[int, int], ranges: int) -> list[int]:
    """Viewers per range from the +1/-1 at span edges."""
    out, running = [], 0
    for index in range(ranges):
        running += deltas.get(index, 0)
        out.append(running)
    return out


async def _raw(
    conn: Connection, q: EngagementQuery, window: Window, length: float | None
) -> Engagement:
    """From the watched ranges (islands) of the sessions started in `window`; the
    timeline length is `length` if given, else computed from those sessions."""
    rows = await _raw_edges(conn, q, window, length)
    total = next((r["total"] for r in rows if r["edge"] == -1), None)
    deltas: dict[int, int] = {}
    for r in rows:
        if r["edge"] >= 0:
            deltas[r["edge"]] = deltas.get(r["edge"], 0) + r["delta"]
    counts = {i: c for i, c in enumerate(_running(deltas, q.ranges)) if c}
    return (total if total and total > 0 else None), counts


async def _raw_edges(
    conn: Connection,
    q: EngagementQuery,
    window: Window,
    length: float | None,
    by_bucket: bool = False,
) -> list[Record]:
    """Rows (edge, delta[, bucket]) and one (-1, 0, total): the +1/-1 at the edges of the
    range spans the selected sessions' islands cover, per 15-minute bucket if asked.

    Each island becomes a span of range indexes, first = floor(from / (L / R)) and
    last = ceil(to / (L / R)) - 1, clamped to [0, R). A session's islands are sorted and
    disjoint, so its spans are sorted too and can overlap only the one before: each span
    counts from just past the previous one's last. One row per island, no window
    functions, no DISTINCT.
    """
    p = Params()
    conditions = [*p.sessions(q.selection, window), "s.played"]
    ranges = p.add(q.ranges, "int")
    total = (
        "SELECT coalesce(max(duration), max(furthest)) AS total FROM sel"
        if length is None
        else f"SELECT {p.add(length, 'float8')} AS total"
    )
    bucket = rollups.grain_sql() if by_bucket else "NULL"
    return await conn.fetch(
        f"""
        WITH sel AS MATERIALIZED (
            SELECT {bucket}::timestamptz AS bucket, s.islands, s.duration, s.furthest
              FROM sessions s
             WHERE {where(conditions)}
        ), len AS (
            {total}
        ), spans AS (
            -- clamped in float8 before the cast: a range far past the length (a duration
            -- that shrank) must not overflow int
            SELECT sel.bucket,
                   least({ranges}, greatest(0, floor(sel.islands[2 * k - 1]
                                                     / (len.total / {ranges}))))::int AS first,
                   least({ranges} - 1, ceil(sel.islands[2 * k] / (len.total / {ranges})) - 1)::int
                       AS last,
                   CASE WHEN k = 1 THEN -1 ELSE least(
                       {ranges} - 1,
                       ceil(sel.islands[2 * k - 2] / (len.total / {ranges})) - 1)::int END
                       AS before
              FROM sel CROSS JOIN len,
                   generate_series(1, coalesce(cardinality(sel.islands), 0) / 2) AS k
             WHERE len.total > 0
        ), pieces AS (
            SELECT bucket, greatest(first, before + 1) AS first, last FROM spans
        )
        SELECT NULL::timestamptz AS bucket, -1 AS edge, 0::bigint AS delta,
               (SELECT total FROM len) AS total
        UNION ALL
        SELECT bucket, first, count(*), NULL FROM pieces WHERE last >= first GROUP BY 1, 2
        UNION ALL
        SELECT bucket, last + 1, -count(*), NULL FROM pieces WHERE last >= first GROUP BY 1, 2
        """,
        *p.values,
    )


async def engagement_of(conn: Connection, q: EngagementQuery) -> tuple[Engagement, int | None]:
    """The engagement answer and, with normalize=sessions, the number of selected
    sessions it is a share of: every one, played a second or not (the plays answer at
    threshold 0)."""
    total, counts = await engagement(conn, q)
    if q.normalize != "sessions" or total is None:
        return (total, counts), None
    every = BucketQuery(q.selection, q.window, Span(months=120), "UTC", 0.0)
    return (total, counts), sum(b.views for b in await plays(conn, every))

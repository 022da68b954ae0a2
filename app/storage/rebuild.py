"""Every rollup rebuilt from the stored sessions and impressions, set-based: one
INSERT ... SELECT per table, so PostgreSQL does the work (10 million sessions in minutes,
not the hours a row-by-row walk takes) and no session row is rewritten.

It is the same arithmetic as the writer's (app/storage/rollups.py, Deltas), in SQL, in
float8 where that code uses Python floats (which are float8): watch classes, device
classes folded to `other`, the 25/50/75/95/100 % milestones, engagement ranges
(floor(from / (L / R)) .. ceil(to / (L / R)) - 1 per island, an island counted from just
past the one before it), histogram buckets ceil(ln(ms) / ln(1.1)). A test holds a rebuild
equal to what ingest maintained, row for row.

Used by the one-off backfill after a migration that adds rollups, and by `vidmetrics seed`.
"""

from __future__ import annotations

from typing import Any

from app.model import quantiles
from app.model.rollup import (
    BREAKDOWN_COLUMNS,
    COMPLETION_COLUMNS,
    ENGAGEMENT_RANGES,
    GRAIN_SECONDS,
    KEY_SOURCES_GRAIN_SECONDS,
    MILESTONES,
    QOE_COLUMNS,
    QOE_GRAIN_SECONDS,
    REACHED_COLUMNS,
    SEEK,
    STARTUP,
    UNKNOWN_DURATION,
    WATCH_BOUNDS,
)
from app.model.vocabulary import BROWSERS, DEVICES, PLATFORMS
from app.storage import scores
from app.storage.driver import Connection
from app.storage.rollups import DISTINCT_SECONDS, KEYS, MERGED, ROLLUP_TABLES, SUMS, grain_sql

WORK_MEM = "256MB"  # for the rebuild's transaction only
# (table, the owner column as selected, the join that provides it)
OWNERS = (("", "s.video_id", ""), ("key_", "v.key", "JOIN videos v ON v.id = s.video_id"))


def _folded(column: str, known: tuple[str, ...]) -> str:
    """A device-class column, `other` for anything outside the vocabulary."""
    listed = ", ".join(f"'{k}'" for k in known)
    return f"(CASE WHEN {column} IN ({listed}) THEN {column} ELSE 'other' END)"


BROWSER = _folded("s.browser", BROWSERS)
PLATFORM = _folded("s.platform", PLATFORMS)
DEVICE = _folded("s.device", DEVICES)
WATCH_CLASS = "(" + " + ".join(f"(s.watch_seconds >= {b}::float8)::int" for b in WATCH_BOUNDS) + ")"
KNOWN = "s.duration > 0"


def _histogram_index(ms: str) -> str:
    """quantiles.index in SQL: the same C log(), the same float8 division (and NULL for
    NULL: greatest() would skip it)."""
    return (
        f"(CASE WHEN {ms} IS NOT NULL THEN ceil(ln(least(greatest({ms}, 1::float8), "
        f"{quantiles.MAX_MS!r}::float8)) / ln({quantiles.GAMMA!r}::float8))::int END)"
    )


def _plays(prefix: str, owner: str, join: str, src: str) -> str:
    classes = (
        [f"count(*) FILTER (WHERE {BROWSER} = '{b}')" for b in BROWSERS]
        + [f"count(*) FILTER (WHERE {PLATFORM} = '{p}')" for p in PLATFORMS]
        + [f"count(*) FILTER (WHERE {DEVICE} = '{d}')" for d in DEVICES]
    )
    return f"""
        INSERT INTO rollup_{prefix}plays ({"key" if prefix else "video_id"}, bucket, class,
                                          sessions, watch_seconds, {", ".join(BREAKDOWN_COLUMNS)},
                                          changes)
        SELECT {owner}, {grain_sql(GRAIN_SECONDS)}, {WATCH_CLASS}, count(*), sum(s.watch_seconds),
               {", ".join(classes)}, count(*)
          FROM {src} s {join} WHERE s.played GROUP BY 1, 2, 3"""


def _sources(prefix: str, owner: str, join: str, src: str) -> str:
    reached = [f"count(*) FILTER (WHERE {WATCH_CLASS} >= {k})" for k in range(len(REACHED_COLUMNS))]
    return f"""
        INSERT INTO rollup_{prefix}sources ({"key" if prefix else "video_id"}, bucket, page,
                                            {", ".join(REACHED_COLUMNS)})
        SELECT {owner}, {grain_sql(KEY_SOURCES_GRAIN_SECONDS if prefix else GRAIN_SECONDS)},
               s.page, {", ".join(reached)}
          FROM {src} s {join} WHERE s.played AND s.page IS NOT NULL GROUP BY 1, 2, 3"""


def _completion(prefix: str, owner: str, join: str, src: str) -> str:
    ratio = "s.furthest / s.duration"
    counts = [
        "count(*)",
        f"count(*) FILTER (WHERE {KNOWN})",
        *[
            f"count(*) FILTER (WHERE {KNOWN} AND {ratio} >= {m / 100!r}::float8)"
            for m in MILESTONES
        ],
        f"count(*) FILTER (WHERE {KNOWN} AND (s.ended OR s.furthest >= s.duration - 1))",
    ]
    return f"""
        INSERT INTO rollup_{prefix}completion ({"key" if prefix else "video_id"}, bucket, class,
                                               device, {", ".join(COMPLETION_COLUMNS)},
                                               percent_sum)
        SELECT {owner}, {grain_sql(GRAIN_SECONDS)}, {WATCH_CLASS}, {DEVICE}, {", ".join(counts)},
               coalesce(sum(least(1::float8, {DISTINCT_SECONDS} / s.duration))
                        FILTER (WHERE {KNOWN}), 0)
          FROM {src} s {join} WHERE s.played GROUP BY 1, 2, 3, 4"""


def _qoe(prefix: str, owner: str, join: str, src: str) -> str:
    latency = "(s.seek_ms / nullif(s.seek_count, 0))"
    sums = {
        "views": "count(*)",
        "startups": "count(s.startup_ms)",
        "watch_seconds": "sum(s.watch_seconds)",
        "rebuffer_count": "sum(s.rebuffer_count)",
        "rebuffer_seconds": "sum(s.rebuffer_seconds)",
        "failures": "count(s.failure)",
        "startup_failures": "count(*) FILTER (WHERE s.failed_before_start)",
        "exits": "count(*) FILTER (WHERE s.exited_before_start)",
        "seek_views": "count(*) FILTER (WHERE s.seek_count > 0)",
        **scores.sums("s"),
    }
    assert list(sums) == QOE_COLUMNS
    owner_column = "key" if prefix else "video_id"
    groups = "owner, bucket, browser, platform, device"
    return f"""
        WITH q AS MATERIALIZED (
            SELECT {owner} AS owner, {grain_sql(QOE_GRAIN_SECONDS)} AS bucket,
                   {BROWSER} AS browser, {PLATFORM} AS platform, {DEVICE} AS device,
                   s.watch_seconds, s.startup_ms, s.rebuffer_count, s.rebuffer_seconds,
                   s.failure, s.failed_before_start, s.exited_before_start, s.seek_count,
                   {_histogram_index("s.startup_ms")} AS startup_idx,
                   {_histogram_index(latency)} AS seek_idx, {scores.ROW_COLUMNS}
              FROM {src} s {join} {scores.LATERAL} WHERE s.qoe
        ), sums AS (
            SELECT {groups}, {", ".join(sums.values())} FROM q AS s GROUP BY 1, 2, 3, 4, 5
        ), hist AS (  -- per row and histogram bucket: views
            SELECT {groups}, metric, idx, count(*) AS n
              FROM q, LATERAL (VALUES ({STARTUP}, startup_idx),
                                      ({SEEK}, seek_idx)) AS h(metric, idx)
             WHERE idx IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7
        ), runs AS (  -- and the gap to the next bucket
            SELECT *, coalesce(lead(idx) OVER w - idx - 1, 0) AS gap
              FROM hist WINDOW w AS (PARTITION BY {groups}, metric ORDER BY idx)
        ), literals AS (  -- '[low:high]={{n,0,n,...}}': the subscripts are histogram buckets
            SELECT {groups}, metric,
                   ('[' || min(idx) || ':' || max(idx) || ']={{'
                    || string_agg(n || repeat(',0', gap), ',' ORDER BY idx) || '}}')::int[]
                       AS hist
              FROM runs GROUP BY 1, 2, 3, 4, 5, 6
        )
        INSERT INTO rollup_{prefix}qoe ({owner_column}, bucket, browser, platform, device,
                                        {", ".join(QOE_COLUMNS)}, startup_hist, seek_hist)
        SELECT m.*, a.hist, b.hist
          FROM sums m
          LEFT JOIN literals a ON ({_prefixed("a", groups)}) = ({_prefixed("m", groups)})
                              AND a.metric = {STARTUP}
          LEFT JOIN literals b ON ({_prefixed("b", groups)}) = ({_prefixed("m", groups)})
                              AND b.metric = {SEEK}"""


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def _qoe_hist(prefix: str, owner: str, join: str, src: str) -> str:
    latency = "(s.seek_ms / nullif(s.seek_count, 0))"
    return f"""
        INSERT INTO rollup_{prefix}qoe_hist ({"key" if prefix else "video_id"}, bucket, metric,
                                             idx, views)
        SELECT {owner}, {grain_sql(QOE_GRAIN_SECONDS)}, h.metric, h.idx, count(*)
          FROM {src} s {join},
               LATERAL (VALUES ({STARTUP}, {_histogram_index("s.startup_ms")}),
                               ({SEEK}, {_histogram_index(latency)})) AS h(metric, idx)
         WHERE s.qoe AND h.idx IS NOT NULL GROUP BY 1, 2, 3, 4"""


def _engagement(src: str) -> str:
    ranges = ", ".join(f"({r})" for r in ENGAGEMENT_RANGES)
    step = "(e.duration / r.ranges)"
    return f"""
        WITH e AS MATERIALIZED (
            SELECT s.video_id, {grain_sql(GRAIN_SECONDS)} AS bucket,
                   CASE WHEN {KNOWN} THEN s.duration ELSE {UNKNOWN_DURATION!r}::float8 END
                       AS duration, s.islands
              FROM {src} s WHERE s.played
        ), r(ranges) AS (VALUES {ranges}
        ), totals AS (
            SELECT video_id, bucket, ranges, duration, count(*) AS sessions
              FROM e CROSS JOIN r GROUP BY 1, 2, 3, 4
        ), pieces AS (  -- an island's ranges, from just past the previous island's last
            SELECT e.video_id, e.bucket, r.ranges, e.duration,
                   greatest(least(r.ranges, greatest(0, floor(e.islands[2 * k - 1] / {step}))),
                            CASE WHEN k = 1 THEN 0 ELSE least(r.ranges - 1, ceil(
                                e.islands[2 * k - 2] / {step}) - 1) + 1 END)::int AS first,
                   least(r.ranges - 1, ceil(e.islands[2 * k] / {step}) - 1)::int AS last
              FROM e CROSS JOIN r,
                   generate_series(1, coalesce(cardinality(e.islands), 0) / 2) AS k
             WHERE e.duration > 0
        ), edges AS (
            SELECT video_id, bucket, ranges, duration, at, sum(delta) AS delta
              FROM (SELECT video_id, bucket, ranges, duration, first AS at, 1 AS delta
                      FROM pieces WHERE last >= first
                    UNION ALL
                    SELECT video_id, bucket, ranges, duration, last + 1, -1
                      FROM pieces WHERE last >= first) d
             GROUP BY 1, 2, 3, 4, 5
        ), runs AS (  -- viewers from each edge to the next (or to the end)
            SELECT *, sum(delta) OVER w AS viewers,
                   coalesce(lead(at) OVER w, ranges) - at AS width,
                   min(at) OVER (PARTITION BY video_id, bucket, ranges, duration) AS lead_in
              FROM edges
            WINDOW w AS (PARTITION BY video_id, bucket, ranges, duration ORDER BY at)
        ), counts AS (
            SELECT video_id, bucket, ranges, duration,
                   repeat('0,', min(lead_in)::int)
                   || string_agg(repeat(viewers || ',', width::int), '' ORDER BY at) AS listed
              FROM runs GROUP BY 1, 2, 3, 4
        )
        INSERT INTO rollup_engagement (video_id, bucket, ranges, duration, sessions, counts)
        SELECT t.video_id, t.bucket, t.ranges, t.duration, t.sessions,
               ('{{' || rtrim(coalesce(c.listed, repeat('0,', t.ranges)), ',') || '}}')::int[]
          FROM totals t LEFT JOIN counts c USING (video_id, bucket, ranges, duration)"""


def _impressions(prefix: str, owner: str, join: str, loads: str) -> str:
    return f"""
        INSERT INTO rollup_{prefix}impressions ({"key" if prefix else "video_id"}, bucket,
                                                impressions)
        SELECT {owner.replace("s.", "i.")}, {grain_sql(column="i.at")}, count(*)
          FROM {loads} i {join.replace("s.video_id", "i.video_id")} GROUP BY 1, 2"""


def statements(
    sessions: str = "sessions", impressions: str = "impressions", add: bool = False
) -> list[tuple[str, str]]:
    """(rollup table, the INSERT that fills it from `sessions` and `impressions`), for
    every rollup table. add=False: into empty tables (a rebuild); add=True: added to what
    is there (rows in key order, so concurrent writers never deadlock)."""
    out = [("rollup_engagement", _engagement(sessions))]
    for prefix, owner, join in OWNERS:
        for name, build in (
            ("plays", _plays),
            ("sources", _sources),
            ("completion", _completion),
            ("qoe", _qoe),
            ("qoe_hist", _qoe_hist),
        ):
            out.append((f"rollup_{prefix}{name}", build(prefix, owner, join, sessions)))
        out.append((f"rollup_{prefix}impressions", _impressions(prefix, owner, join, impressions)))
    assert sorted(t for t, _ in out) == sorted(ROLLUP_TABLES)
    if add:
        out = [(table, _adding(table, sql)) for table, sql in out]
    return out


def _adding(table: str, insert: str) -> str:
    """An INSERT ... SELECT made to add into existing rows (the writer's upsert, set-based):
    its rows sorted by key, then ON CONFLICT the sums added and the arrays merged."""
    kind = table.removeprefix("rollup_").removeprefix("key_")
    keys = KEYS[table]
    updates = [f"{c} = r.{c} + EXCLUDED.{c}" for c in SUMS[kind]] + [
        f"{c} = " + merge.format(old=f"r.{c}", new=f"EXCLUDED.{c}")
        for c, merge in MERGED.get(kind, [])
    ]
    head, select = insert.split(f"INSERT INTO {table} ", 1)
    columns, query = select.split(")", 1)
    return (
        f"{head}INSERT INTO {table} AS r {columns}) "
        f"SELECT * FROM ({query}) AS added {columns}) ORDER BY {', '.join(keys)} "
        f"ON CONFLICT ({', '.join(keys)}, shard) DO UPDATE SET {', '.join(updates)}"
    )


async def rebuild(conn: Connection, progress: Any = None) -> None:
    """Empty every rollup table and fill it from the sessions and impressions, in the
    caller's transaction; sessions and impressions are locked against writes meanwhile
    (the writers wait, then add their deltas to the rebuilt rows)."""
    await conn.execute("LOCK TABLE sessions, impressions IN SHARE MODE")
    await conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")  # group in memory, not on disk
    # the engagement cache's entries are checked against the rollups' change counts,
    # which a rebuild starts afresh: empty it too
    await conn.execute("TRUNCATE engagement_cache, " + ", ".join(ROLLUP_TABLES))
    work = statements()
    if progress is not None:
        progress.reset(total=len(work))
    for _, sql in work:
        await conn.execute(sql)
        if progress is not None:
            progress.update(1)


async def backfill(conn: Connection, progress: Any = None) -> bool:
    """Rebuild the rollups once, after the migration that created them (rollup_state
    'backfill' pending). Returns True if it ran."""
    pending = await conn.fetchval(
        "SELECT 1 FROM rollup_state WHERE name = 'backfill' AND done_at IS NULL"
    )
    if not pending:
        return False
    async with conn.transaction():
        await rebuild(conn, progress)
        await conn.execute("UPDATE rollup_state SET done_at = now() WHERE name = 'backfill'")
    await conn.execute("ANALYZE " + ", ".join(ROLLUP_TABLES))
    return True

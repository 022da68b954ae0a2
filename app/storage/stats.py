"""SQL for the query API. Statements are assembled from constant fragments chosen by which
filters are present; every value arrives as a `$n` parameter.

Buckets are computed on local time (`started_at AT TIME ZONE tz`): fixed-width spans with
`time_bucket` on TimescaleDB and `date_bin` elsewhere (same origin, so identical buckets),
month spans with calendar arithmetic on both.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from app.model import rollup, sketch
from app.model.query import BucketQuery, EngagementQuery, Selection, Window
from app.model.vocabulary import BROWSERS, DEVICES, PLATFORMS
from app.storage import rollups
from app.storage.backend import Backend, Connection, Record

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


def _bucket(q: BucketQuery, p: Params, on: Backend, column: str = "s.started_at") -> str:
    local = f"({column} AT TIME ZONE {p.add(q.timezone, 'text')})"
    if q.interval.months:
        months = p.add(q.interval.months, "int")
        index = (
            f"((extract(year FROM {local})::int - {MONTH_ORIGIN_YEAR}) * 12 "
            f"+ extract(month FROM {local})::int - 1)"
        )
        return (
            f"(timestamp '{MONTH_ORIGIN_YEAR}-01-01' + make_interval(months => "
            f"(floor({index}::numeric / {months}) * {months})::int))"
        )
    width = p.add(dt.timedelta(seconds=q.interval.seconds), "interval")
    return f"{on.bucket_function()}({width}, {local}, {ORIGIN})"


# -- which requests the rollups answer exactly ------------------------------------------
@functools.lru_cache(maxsize=4096)
def _whole_offsets(
    zone: str, first_day: int, last_day: int, grain: int = rollup.GRAIN_SECONDS
) -> bool:
    """True when every UTC offset of `zone` between the two days (days since the epoch)
    is a whole multiple of `grain` seconds, sampled every 3 hours."""
    tz = ZoneInfo(zone)
    for hour in range(first_day * 24, (last_day + 1) * 24 + 1, 3):
        moment = dt.datetime.fromtimestamp(hour * 3600, dt.UTC).astimezone(tz)
        offset = moment.utcoffset()
        if offset is None or offset.total_seconds() % grain:
            return False
    return True


def _inner(window: Window, width: int = rollup.GRAIN_SECONDS) -> Window | None:
    """The whole buckets (15 minutes, or `width` seconds) inside the window, if any."""
    start, end = rollup.grain_up(window.start, width), rollup.grain(window.end, width)
    return Window(start, end) if start < end else None


def _edges(window: Window, inner: Window) -> list[Window]:
    return [
        w
        for w in (Window(window.start, inner.start), Window(inner.end, window.end))
        if w.start < w.end
    ]


def bucket_rollup_plan(q: BucketQuery) -> tuple[int, Window] | None:
    """(watch class, inner window) when the rollups answer `q` exactly, else None."""
    cls = rollup.threshold_class(q.minimum_watch_seconds)
    if cls is None:
        return None
    inner = _rollup_window(q, rollup.GRAIN_SECONDS)
    return None if inner is None else (cls, inner)


def _rollup_window(q: BucketQuery, width: int) -> Window | None:
    """The whole `width`-second UTC buckets of q's window, when rollups at that grain
    re-bucket into q's buckets exactly: no session filter, an interval of whole grains
    (or months), and a zone whose offsets in the window are whole grains."""
    if q.selection.session is not None or q.interval.seconds % width:
        return None
    inner = _inner(q.window, width)
    if inner is None:
        return None
    day = 86400
    if not _whole_offsets(
        q.timezone,
        int(q.window.start.timestamp() // day) - 1,
        int(q.window.end.timestamp() // day) + 1,
        width,
    ):
        return None
    return inner


def _whole_key(sel: Selection) -> bool:
    """Every video of one ingest key, no other filter."""
    return (
        sel.key is not None and sel.video is None and sel.identifier is None and sel.session is None
    )


def _rollup_scope(sel: Selection, p: Params, kind: str) -> tuple[str, list[str]]:
    """The rollup table and condition for a selection: the per-key table when the whole
    key is selected (a few rows per bucket), else the per-video table."""
    if _whole_key(sel):
        return f"rollup_key_{kind}", [f"r.key = {p.add(sel.key, 'text')}"]
    return f"rollup_{kind}", video_filter(sel, p, "r.video_id")


def _rollup_where(
    q: BucketQuery, p: Params, kind: str, inner: Window, cls: int | None = None
) -> tuple[str, list[str]]:
    """Table and conditions for the whole buckets of `inner` (and watch class >= cls)."""
    table, where = _rollup_scope(q.selection, p, kind)
    where.append(f"r.bucket >= {p.add(inner.start, 'timestamptz')}")
    where.append(f"r.bucket < {p.add(inner.end, 'timestamptz')}")
    if cls is not None:
        where.append(f"r.class >= {p.add(cls, 'int')}")
    return table, where


def _sessions_where(q: BucketQuery, p: Params, windows: list[Window]) -> list[str]:
    """Conditions for the raw path: the selection's sessions started in `windows` that
    reach the threshold."""
    where = video_filter(q.selection, p, "s.video_id")
    where.append(_window_condition(windows, p, "s.started_at"))
    if q.selection.session is not None:
        where.append(f"s.session_data @> {p.add(q.selection.session, 'jsonb')}")
    where.append(f"s.watch_seconds >= {p.add(q.minimum_watch_seconds, 'float8')}")
    where.append("s.played")
    return where


async def _by_plan(
    q: BucketQuery,
    use_rollups: bool,
    raw: Callable[[list[Window]], Awaitable[None]],
    from_rollups: Callable[[int, Window], Awaitable[None]],
) -> None:
    """Answer from the rollups where they are exact (whole buckets, then each partial edge
    of the window from raw rows, one plain time range each: index-friendly), else raw."""
    plan = bucket_rollup_plan(q) if use_rollups else None
    if plan is None:
        await raw([q.window])
        return
    cls, inner = plan
    await from_rollups(cls, inner)
    for edge in _edges(q.window, inner):
        await raw([edge])


# -- plays ------------------------------------------------------------------------------
@dataclass(slots=True)
class PlaysBucket:
    """One bucket of /plays: views, watch seconds, and counts per BREAKDOWN_COLUMNS."""

    bucket: dt.datetime
    views: int = 0
    watch_seconds: float = 0.0
    counts: list[int] = field(default_factory=lambda: [0] * len(rollup.BREAKDOWN_COLUMNS))
    impressions: int = 0


_COLUMN_AT = {c: i for i, c in enumerate(rollup.BREAKDOWN_COLUMNS)}


def _window_condition(windows: list[Window], p: Params, column: str) -> str:
    return (
        "("
        + " OR ".join(
            f"({column} >= {p.add(w.start, 'timestamptz')} AND {column} < "
            f"{p.add(w.end, 'timestamptz')})"
            for w in windows
        )
        + ")"
    )


async def _plays_raw(
    conn: Connection,
    q: BucketQuery,
    windows: list[Window],
    into: dict[dt.datetime, PlaysBucket],
) -> None:
    p = Params()
    bucket = _bucket(q, p, conn.backend)
    where = _sessions_where(q, p, windows)
    rows = await conn.fetch(
        f"""
        SELECT {bucket} AS bucket, s.browser, s.platform, s.device,
               count(*) AS views, sum(s.watch_seconds) AS watch_seconds
          FROM sessions s
         WHERE {" AND ".join(where)}
         GROUP BY 1, 2, 3, 4
        """,
        *p.values,
    )
    for r in rows:
        entry = into.get(r["bucket"]) or into.setdefault(r["bucket"], PlaysBucket(r["bucket"]))
        entry.views += r["views"]
        entry.watch_seconds += r["watch_seconds"]
        for column in (
            f"browser_{r['browser']}",
            f"platform_{r['platform']}",
            f"device_{r['device']}",
        ):
            kind = column.split("_", 1)[0]
            entry.counts[_COLUMN_AT.get(column, _COLUMN_AT[f"{kind}_other"])] += r["views"]


async def _plays_rollup(
    conn: Connection,
    q: BucketQuery,
    cls: int,
    inner: Window,
    into: dict[dt.datetime, PlaysBucket],
) -> None:
    p = Params()
    bucket = _bucket(q, p, conn.backend, "r.bucket")
    table, where = _rollup_where(q, p, "plays", inner, cls)
    sums = ", ".join(f"sum(r.{c})" for c in rollup.BREAKDOWN_COLUMNS)
    rows = await conn.fetch(
        f"""
        SELECT {bucket} AS bucket, sum(r.sessions) AS views, sum(r.watch_seconds) AS watch,
               {sums}
          FROM {table} r
         WHERE {" AND ".join(where)}
         GROUP BY 1
        HAVING sum(r.sessions) > 0
        """,
        *p.values,
    )
    for r in rows:
        entry = into.get(r["bucket"]) or into.setdefault(r["bucket"], PlaysBucket(r["bucket"]))
        entry.views += r["views"]
        entry.watch_seconds += r["watch"]
        for i in range(len(rollup.BREAKDOWN_COLUMNS)):
            entry.counts[i] += r[3 + i]


async def plays(conn: Connection, q: BucketQuery, use_rollups: bool = True) -> list[PlaysBucket]:
    """Views per bucket: whole 15-minute buckets from the rollup, the partial edges of the
    window (and anything the rollup cannot answer exactly) from the sessions table."""
    out: dict[dt.datetime, PlaysBucket] = {}

    async def raw(windows: list[Window]) -> None:
        await _plays_raw(conn, q, windows, out)
        await _impressions_raw(conn, q, windows, out)

    async def from_rollups(cls: int, inner: Window) -> None:
        await _plays_rollup(conn, q, cls, inner, out)
        await _impressions_rollup(conn, q, inner, out)

    await _by_plan(q, use_rollups, raw, from_rollups)
    return [out[b] for b in sorted(out) if out[b].views > 0 or out[b].impressions > 0]


async def _impressions_raw(
    conn: Connection,
    q: BucketQuery,
    windows: list[Window],
    into: dict[dt.datetime, PlaysBucket],
) -> None:
    p = Params()
    bucket = _bucket(q, p, conn.backend, "i.at")
    where = video_filter(q.selection, p, "i.video_id")
    where.append(_window_condition(windows, p, "i.at"))
    if q.selection.session is not None:
        where.append(f"i.session_data @> {p.add(q.selection.session, 'jsonb')}")
    for r in await conn.fetch(
        f"SELECT {bucket} AS bucket, count(*) AS n FROM impressions i "
        f"WHERE {' AND '.join(where)} GROUP BY 1",
        *p.values,
    ):
        entry = into.get(r["bucket"]) or into.setdefault(r["bucket"], PlaysBucket(r["bucket"]))
        entry.impressions += r["n"]


async def _impressions_rollup(
    conn: Connection,
    q: BucketQuery,
    inner: Window,
    into: dict[dt.datetime, PlaysBucket],
) -> None:
    p = Params()
    bucket = _bucket(q, p, conn.backend, "r.bucket")
    table, where = _rollup_where(q, p, "impressions", inner)
    for r in await conn.fetch(
        f"SELECT {bucket} AS bucket, sum(r.impressions) AS n "
        f"FROM {table} r WHERE {' AND '.join(where)} GROUP BY 1",
        *p.values,
    ):
        entry = into.get(r["bucket"]) or into.setdefault(r["bucket"], PlaysBucket(r["bucket"]))
        entry.impressions += int(r["n"])


# -- completion -------------------------------------------------------------------------
@dataclass(slots=True)
class CompletionCounts:
    """Per bucket and device: COMPLETION_COLUMNS, then the sum of fractions watched."""

    values: list[float] = field(
        default_factory=lambda: [0.0] * (len(rollup.COMPLETION_COLUMNS) + 1)
    )


async def completion(
    conn: Connection,
    q: BucketQuery,
    use_rollups: bool = True,
) -> dict[dt.datetime, dict[str, CompletionCounts]]:
    """{bucket: {device: counts}} for the views of the selection."""
    out: dict[dt.datetime, dict[str, CompletionCounts]] = {}

    def add(bucket: dt.datetime, device: str, values: list[float]) -> None:
        entry = out.setdefault(bucket, {}).setdefault(device, CompletionCounts())
        for i, value in enumerate(values):
            entry.values[i] += value

    async def raw(windows: list[Window]) -> None:
        p = Params()
        bucket = _bucket(q, p, conn.backend)
        where = _sessions_where(q, p, windows)
        known = "s.duration > 0"
        reached = ", ".join(
            f"count(*) FILTER (WHERE {known} AND s.furthest / s.duration >= "
            f"{p.add(m / 100, 'float8')})"
            for m in rollup.MILESTONES
        )
        devices = p.add(list(DEVICES), "text[]")
        rows = await conn.fetch(
            f"""
            SELECT {bucket} AS bucket,
                   CASE WHEN s.device = ANY({devices}) THEN s.device ELSE 'other' END AS device,
                   count(*), count(*) FILTER (WHERE {known}), {reached},
                   count(*) FILTER (WHERE {known} AND (s.ended OR s.furthest >= s.duration - 1)),
                   coalesce(sum(least(1.0, {rollups.DISTINCT_SECONDS} / s.duration))
                            FILTER (WHERE {known}), 0)
              FROM sessions s
             WHERE {" AND ".join(where)}
             GROUP BY 1, 2
            """,
            *p.values,
        )
        for r in rows:
            add(r["bucket"], r["device"], [float(r[i]) for i in range(2, len(r))])

    async def from_rollups(cls: int, inner: Window) -> None:
        p = Params()
        bucket = _bucket(q, p, conn.backend, "r.bucket")
        table, where = _rollup_where(q, p, "completion", inner, cls)
        sums = ", ".join(f"sum(r.{c})" for c in [*rollup.COMPLETION_COLUMNS, "percent_sum"])
        for r in await conn.fetch(
            f"SELECT {bucket} AS bucket, r.device, {sums} FROM {table} r "
            f"WHERE {' AND '.join(where)} GROUP BY 1, 2",
            *p.values,
        ):
            add(r["bucket"], r["device"], [float(r[i]) for i in range(2, len(r))])

    await _by_plan(q, use_rollups, raw, from_rollups)
    return {
        b: {d: c for d, c in devices.items() if c.values[0] > 0}
        for b, devices in sorted(out.items())
        if any(c.values[0] > 0 for c in devices.values())
    }


# -- quality of experience --------------------------------------------------------------
@dataclass(slots=True)
class QoeCounts:
    """QoE sums per rollup.QOE_COLUMNS, and the startup / seek-latency histograms."""

    values: list[float] = field(default_factory=lambda: [0.0] * len(rollup.QOE_COLUMNS))
    startup: dict[int, int] = field(default_factory=dict)
    seek: dict[int, int] = field(default_factory=dict)

    def merge(self, other: QoeCounts) -> None:
        for i, value in enumerate(other.values):
            self.values[i] += value
        sketch.add(self.startup, other.startup)
        sketch.add(self.seek, other.seek)


BREAKDOWN_CLASSES = {"browser": BROWSERS, "platform": PLATFORMS, "device": DEVICES}


def _class_of(breakdown: str | None, value: str) -> str:
    """The group a view counts in: "" without a breakdown, else its (known) class."""
    if breakdown is None:
        return ""
    return value if value in BREAKDOWN_CLASSES[breakdown] else "other"


def qoe_plan(q: BucketQuery) -> Window | None:
    """The whole hours of the window when the hourly QoE rollups answer `q` exactly."""
    return _rollup_window(q, rollup.QOE_GRAIN_SECONDS)


async def qoe(
    conn: Connection,
    q: BucketQuery,
    use_rollups: bool = True,
    breakdown: str | None = None,
) -> dict[dt.datetime, dict[str, QoeCounts]]:
    """{bucket: {group: counts}} over the views with QoE data; the group is "" without a
    breakdown, else the view's browser, platform or device class.

    Whole hours of the window come from the hourly rollups when the zone's offsets are
    whole hours; the partial hours at its edges, and everything else, from the sessions."""
    out: dict[dt.datetime, dict[str, QoeCounts]] = {}
    n = len(rollup.QOE_COLUMNS)

    # the grouping column: a constant name (the caller checked `breakdown`), never text
    # from the client
    def group(alias: str) -> str:
        return f"{alias}.{breakdown}" if breakdown else "''"

    def entry(bucket: dt.datetime, group: str) -> QoeCounts:
        return out.setdefault(bucket, {}).setdefault(_class_of(breakdown, group), QoeCounts())

    async def raw(windows: list[Window]) -> None:
        p = Params()
        bucket = _bucket(q, p, conn.backend)
        where = video_filter(q.selection, p, "s.video_id")
        where.append(_window_condition(windows, p, "s.started_at"))
        if q.selection.session is not None:
            where.append(f"s.session_data @> {p.add(q.selection.session, 'jsonb')}")
        where.append("s.qoe")
        rows = await conn.fetch(
            f"""
            SELECT {bucket} AS bucket, {group("s")}::text AS grp,
                   count(*), count(s.startup_ms), sum(s.watch_seconds), sum(s.rebuffer_count),
                   sum(s.rebuffer_seconds), count(s.failure),
                   count(*) FILTER (WHERE s.failed_before_start),
                   count(*) FILTER (WHERE s.exited_before_start),
                   count(*) FILTER (WHERE s.seek_count > 0),
                   array_agg(s.startup_ms) FILTER (WHERE s.startup_ms IS NOT NULL) AS startups,
                   array_agg(s.seek_ms / s.seek_count) FILTER (WHERE s.seek_count > 0) AS seeks
              FROM sessions s
             WHERE {" AND ".join(where)}
             GROUP BY 1, 2
            """,
            *p.values,
        )
        for r in rows:
            entry(r["bucket"], r["grp"]).merge(
                QoeCounts(
                    [float(r[2 + i] or 0) for i in range(n)],
                    sketch.histogram(r["startups"] or ()),
                    sketch.histogram(r["seeks"] or ()),
                )
            )

    async def from_rollups(inner: Window) -> None:
        p = Params()
        bucket = _bucket(q, p, conn.backend, "r.bucket")
        table, where = _rollup_scope(q.selection, p, "qoe")
        where.append(f"r.bucket >= {p.add(inner.start, 'timestamptz')}")
        where.append(f"r.bucket < {p.add(inner.end, 'timestamptz')}")
        condition = " AND ".join(where)
        sums = ", ".join(f"sum(r.{c})" for c in rollup.QOE_COLUMNS)
        for r in await conn.fetch(
            f"SELECT {bucket} AS bucket, {group('r')}::text AS grp, {sums} "
            f"FROM {table} r WHERE {condition} GROUP BY 1, 2",
            *p.values,
        ):
            entry(r["bucket"], r["grp"]).merge(QoeCounts([float(r[2 + i]) for i in range(n)]))
        if breakdown is None:  # totals: the histogram rows, a plain GROUP BY, and each
            # bucket's histogram returned as two arrays (a few rows, not one per bucket)
            hist = f"{table}_hist"  # rollup_qoe_hist or rollup_key_qoe_hist
            for r in await conn.fetch(
                f"SELECT bucket, kind, array_agg(i ORDER BY i) AS i, "
                f"array_agg(c ORDER BY i) AS c FROM ("
                f"SELECT {bucket} AS bucket, r.metric AS kind, r.idx AS i, "
                f"sum(r.views)::int AS c FROM {hist} r WHERE {condition} "
                f"GROUP BY 1, 2, 3) h WHERE c <> 0 GROUP BY 1, 2",
                *p.values,
            ):
                counts = entry(r["bucket"], "")
                into = counts.startup if r["kind"] == rollup.STARTUP else counts.seek
                sketch.add(into, dict(zip(r["i"], r["c"], strict=True)))
            return
        # per class: the arrays of the class rows, summed per bucket, class and index,
        # and each (bucket, class) histogram returned as two arrays
        unnested = " UNION ALL ".join(
            f"SELECT {bucket} AS bucket, r.{breakdown}::text AS grp, {kind} AS kind, i, "
            f"r.{array}[i] AS c FROM {table} r, generate_subscripts(r.{array}, 1) i "
            f"WHERE {condition}"
            for kind, array in ((rollup.STARTUP, "startup_hist"), (rollup.SEEK, "seek_hist"))
        )
        for r in await conn.fetch(
            f"SELECT bucket, grp, kind, array_agg(i ORDER BY i) AS i, "
            f"array_agg(c ORDER BY i) AS c FROM (SELECT bucket, grp, kind, i, "
            f"sum(c)::int AS c FROM ({unnested}) u GROUP BY 1, 2, 3, 4) h "
            f"WHERE c <> 0 GROUP BY 1, 2, 3",
            *p.values,
        ):
            counts = entry(r["bucket"], r["grp"])
            into = counts.startup if r["kind"] == rollup.STARTUP else counts.seek
            sketch.add(into, dict(zip(r["i"], r["c"], strict=True)))

    inner = qoe_plan(q) if use_rollups else None
    if inner is None:
        await raw([q.window])
    else:
        await from_rollups(inner)
        for edge in _edges(q.window, inner):
            await raw([edge])
    result: dict[dt.datetime, dict[str, QoeCounts]] = {}
    for b in sorted(out):
        groups = {g: v for g, v in out[b].items() if v.values[0] > 0}
        if groups:
            result[b] = groups
    return result


# -- sources ----------------------------------------------------------------------------
async def sources(
    conn: Connection, q: BucketQuery, use_rollups: bool = True
) -> list[tuple[dt.datetime, str, int]]:
    """(bucket, page, views), by bucket, then most views, then page (code point order).
    One statement: the rollup's whole buckets and the raw edges are added up, grouped and
    sorted by PostgreSQL (an hourly month of a busy key is ~10,000 rows)."""
    p = Params()
    parts = []
    plan = bucket_rollup_plan(q) if use_rollups else None
    windows = [q.window]
    if plan is not None:
        cls, inner = plan
        windows = _edges(q.window, inner)  # raw: the partial quarter hours at the ends
        reached = rollup.REACHED_COLUMNS[cls]  # a constant column name, not user text
        quarters = [inner]  # per video, 15 minutes (for a whole key: its videos)
        hourly = _rollup_window(q, rollup.KEY_SOURCES_GRAIN_SECONDS)
        if _whole_key(q.selection) and hourly is not None:  # the key's hourly rows, and
            quarters = _edges(inner, hourly)  # the quarter hours around them
            parts.append(
                f"SELECT {_bucket(q, p, conn.backend, 'r.bucket')} AS bucket, r.page, "
                f"r.{reached} AS views FROM rollup_key_sources r "
                f"WHERE r.key = {p.add(q.selection.key, 'text')} "
                f"AND r.bucket >= {p.add(hourly.start, 'timestamptz')} "
                f"AND r.bucket < {p.add(hourly.end, 'timestamptz')}"
            )
        for window in quarters:
            where = video_filter(q.selection, p, "r.video_id")
            where += [
                f"r.bucket >= {p.add(window.start, 'timestamptz')}",
                f"r.bucket < {p.add(window.end, 'timestamptz')}",
            ]
            parts.append(
                f"SELECT {_bucket(q, p, conn.backend, 'r.bucket')} AS bucket, r.page, "
                f"r.{reached} AS views FROM rollup_sources r "
                f"WHERE {' AND '.join(where)}"
            )
    for window in windows:  # one plain time range each: index-friendly
        bucket = _bucket(q, p, conn.backend)
        where = _sessions_where(q, p, [window])
        where.append("s.page IS NOT NULL")
        parts.append(
            f"SELECT {bucket} AS bucket, s.page, 1 AS views FROM sessions s "
            f"WHERE {' AND '.join(where)}"
        )
    rows = await conn.fetch(
        f"SELECT bucket, page, sum(views)::int8 AS views "
        f"FROM ({' UNION ALL '.join(parts)}) AS u GROUP BY 1, 2 HAVING sum(views) > 0 "
        f'ORDER BY 1, 3 DESC, page COLLATE "C"',
        *p.values,
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def engagement(
    conn: Connection, q: EngagementQuery, use_rollups: bool = True
) -> tuple[float | None, dict[int, int]]:
    """(timeline length, {range index: viewers}); length None when nothing was watched.

    Whole 15-minute buckets: from the engagement rollup when every selected session
    reported the same duration (the usual case for one video) and `ranges` is one the
    rollup keeps; for all videos of a key (durations differ), from the engagement cache,
    bucket by bucket, recomputing only buckets whose sessions changed since. The window's
    partial edges, and everything else, from the sessions' watched ranges.
    """
    inner = _inner(q.window)
    if not use_rollups or inner is None or q.selection.session is not None:
        return await _engagement_raw(conn, q, q.window, None)
    edges = _edges(q.window, inner)
    if _whole_key(q.selection):
        found = await _engagement_of_key(conn, q, inner, edges)
    else:
        durations = await _durations(conn, q.selection, inner, edges)
        found = await _single_length(conn, q, inner, durations)
    if found is None:
        return await _engagement_raw(conn, q, q.window, None)
    length, counts = found
    if length is None:
        return None, {}
    for window in edges:
        _, more = await _engagement_raw(conn, q, window, length)
        for index, viewers in more.items():
            counts[index] = counts.get(index, 0) + viewers
    return length, {i: c for i, c in sorted(counts.items()) if c}


Found = tuple[float | None, dict[int, int]] | None  # None: ask the raw path


async def _single_length(
    conn: Connection, q: EngagementQuery, inner: Window, durations: set[float]
) -> Found:
    """From the per-video engagement rollup, when the sessions share one known duration."""
    if not durations:
        return None, {}
    if (
        len(durations) == 1
        and (length := next(iter(durations))) > 0
        and q.ranges in rollup.ENGAGEMENT_RANGES
    ):
        return length, await _engagement_rollup(conn, q, inner, length)
    return None


def _rollup_durations(sel: Selection, p: Params, inner: Window) -> list[str]:
    where = video_filter(sel, p, "r.video_id")
    return where + [
        f"r.bucket >= {p.add(inner.start, 'timestamptz')}",
        f"r.bucket < {p.add(inner.end, 'timestamptz')}",
        # the rows for the fewest ranges hold every session too
        f"r.ranges = {rollup.ENGAGEMENT_RANGES[0]}",
    ]


async def _durations(
    conn: Connection, sel: Selection, inner: Window | None, edges: list[Window]
) -> set[float]:
    """The durations the selected played sessions reported (UNKNOWN_DURATION: none), from
    the engagement rollup over `inner` and from the sessions in `edges`."""
    durations: set[float] = set()
    if inner is not None:
        p = Params()
        durations = {
            r["duration"]
            for r in await conn.fetch(
                f"SELECT r.duration FROM rollup_engagement r "
                f"WHERE {' AND '.join(_rollup_durations(sel, p, inner))} "
                f"GROUP BY 1 HAVING sum(r.sessions) > 0",
                *p.values,
            )
        }
    for edge in edges:  # one plain time range each: index-friendly
        p = Params()
        cond = video_filter(sel, p, "s.video_id")
        cond.append(_window_condition([edge], p, "s.started_at"))
        cond.append("s.played")
        durations |= {
            r[0]
            for r in await conn.fetch(
                f"SELECT DISTINCT CASE WHEN s.duration > 0 THEN s.duration "
                f"ELSE {rollup.UNKNOWN_DURATION} END FROM sessions s WHERE {' AND '.join(cond)}",
                *p.values,
            )
        }
    return durations


async def _engagement_rollup(
    conn: Connection, q: EngagementQuery, inner: Window, length: float
) -> dict[int, int]:
    p = Params()
    where = video_filter(q.selection, p, "r.video_id")
    where += [
        f"r.bucket >= {p.add(inner.start, 'timestamptz')}",
        f"r.bucket < {p.add(inner.end, 'timestamptz')}",
        f"r.ranges = {p.add(q.ranges, 'int')}",
        f"r.duration = {p.add(length, 'float8')}",
    ]
    counts: dict[int, int] = {}
    for r in await conn.fetch(
        f"SELECT u.i - 1 AS i, sum(u.c) AS c FROM rollup_engagement r, "
        f"unnest(r.counts) WITH ORDINALITY AS u(c, i) WHERE {' AND '.join(where)} "
        f"GROUP BY 1",
        *p.values,
    ):
        if r["c"]:
            counts[r["i"]] = int(r["c"])
    return counts


async def _engagement_of_key(
    conn: Connection, q: EngagementQuery, inner: Window, edges: list[Window]
) -> Found:
    """All videos of a key over the whole buckets of `inner`. Per bucket, the cache holds
    the bucket's durations and its counts for (ranges, length), valid while the bucket's
    change count (rollup_key_plays.changes, summed) is the one they were computed at;
    whatever is missing or stale is computed (durations from the engagement rollup,
    counts from raw rows) in the same snapshot, and cached."""
    key, ranges = q.selection.key, q.ranges
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        versions = {
            r["bucket"]: r["v"]
            for r in await conn.fetch(
                "SELECT bucket, sum(changes)::int8 AS v FROM rollup_key_plays "
                "WHERE key = $1 AND bucket >= $2 AND bucket < $3 GROUP BY bucket HAVING "
                "sum(sessions) > 0",
                key,
                inner.start,
                inner.end,
            )
        }
        valid = [
            r
            for r in await conn.fetch(
                "SELECT bucket, length, version, counts, durations FROM engagement_cache "
                "WHERE key = $1 AND ranges = $2 AND bucket >= $3 AND bucket < $4",
                key,
                ranges,
                inner.start,
                inner.end,
            )
            if versions.get(r["bucket"]) == r["version"]
        ]
        by_bucket: dict[dt.datetime, set[float]] = {r["bucket"]: set(r["durations"]) for r in valid}
        missing = [b for b in versions if b not in by_bucket]
        if missing:
            p = Params()
            where = _rollup_durations(q.selection, p, inner)
            where.append(f"r.bucket = ANY({p.add(missing, 'timestamptz[]')})")
            for r in await conn.fetch(
                f"SELECT r.bucket, r.duration FROM rollup_engagement r "
                f"WHERE {' AND '.join(where)} GROUP BY 1, 2 HAVING sum(r.sessions) > 0",
                *p.values,
            ):
                by_bucket.setdefault(r["bucket"], set()).add(r["duration"])
        durations = set().union(*by_bucket.values()) | await _durations(
            conn, q.selection, None, edges
        )
        known = [d for d in durations if d > 0]
        if not known or len(durations) == 1:
            found = await _single_length(conn, q, inner, durations)
            return found
        length = max(known)  # the raw length: max(duration), NULLs (and 0) aside
        cached = {r["bucket"]: r["counts"] for r in valid if r["length"] == length}
        stale = sorted(b for b in versions if b not in cached)
        fresh: dict[dt.datetime, list[int]] = {}
        if stale:  # what the raw path says for these buckets
            grain = dt.timedelta(seconds=rollup.GRAIN_SECONDS)
            deltas: dict[dt.datetime, dict[int, int]] = {}
            for r in await _raw_edges(
                conn, q, Window(stale[0], stale[-1] + grain), length, by_bucket=True
            ):
                per = deltas.setdefault(r["bucket"], {})
                per[r["edge"]] = per.get(r["edge"], 0) + r["delta"]
            fresh = {b: _running(deltas.get(b, {}), ranges) for b in stale}
    if stale:  # kept unless a newer entry got there first (change counts only grow)
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
            key,
            ranges,
            length,
            stale,
            [versions[b] for b in stale],
            ["{" + ",".join(map(str, fresh[b])) + "}" for b in stale],
            ["{" + ",".join(map(repr, sorted(by_bucket.get(b, ())))) + "}" for b in stale],
        )
    totals = [0] * ranges
    for bucket in versions:
        for i, c in enumerate(fresh[bucket] if bucket in fresh else cached[bucket]):
            totals[i] += c
    return length, {i: c for i, c in enumerate(totals) if c}


def _running(deltas: dict[int, int], ranges: int) -> list[int]:
    """Viewers per range from the +1/-1 at span edges."""
    out, running = [], 0
    for index in range(ranges):
        running += deltas.get(index, 0)
        out.append(running)
    return out


async def _engagement_raw(
    conn: Connection, q: EngagementQuery, window: Window, length: float | None
) -> tuple[float | None, dict[int, int]]:
    """The raw path: from the watched ranges (islands) of the sessions started in `window`;
    the timeline length is `length` if given, else computed from those sessions."""
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
    where = session_filters(q.selection, window, p)
    where.append("s.played")
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
             WHERE {" AND ".join(where)}
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


async def watching(conn: Connection, sel: Selection, ttl_seconds: float) -> int:
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


# -- top videos -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VideoTotals:
    video_id: int
    identifier: str | None
    metadata: Any
    views: int
    watch_seconds: float


async def videos(
    conn: Connection, q: BucketQuery, limit: int, use_rollups: bool = True
) -> list[VideoTotals]:
    """The most viewed videos of the selection in the window (views, watch seconds)."""
    totals: dict[int, list[float]] = {}

    async def raw(windows: list[Window]) -> None:
        p = Params()
        where = _sessions_where(q, p, windows)
        for r in await conn.fetch(
            f"SELECT s.video_id, count(*) AS n, sum(s.watch_seconds) AS w FROM sessions s "
            f"WHERE {' AND '.join(where)} GROUP BY 1",
            *p.values,
        ):
            entry = totals.setdefault(r["video_id"], [0, 0.0])
            entry[0] += r["n"]
            entry[1] += r["w"]

    async def from_rollups(cls: int, inner: Window) -> None:
        p = Params()
        where = video_filter(q.selection, p, "r.video_id")  # per video, even for a key
        where += [
            f"r.bucket >= {p.add(inner.start, 'timestamptz')}",
            f"r.bucket < {p.add(inner.end, 'timestamptz')}",
            f"r.class >= {p.add(cls, 'int')}",
        ]
        for r in await conn.fetch(
            f"SELECT r.video_id, sum(r.sessions) AS n, sum(r.watch_seconds) AS w "
            f"FROM rollup_plays r WHERE {' AND '.join(where)} GROUP BY 1",
            *p.values,
        ):
            entry = totals.setdefault(r["video_id"], [0, 0.0])
            entry[0] += r["n"]
            entry[1] += r["w"]

    await _by_plan(q, use_rollups, raw, from_rollups)
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

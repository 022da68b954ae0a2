"""What every question shares: bucketing in local time, and the plan that says which part
of a window the rollups answer exactly (whole buckets) and which the raw rows must.

Buckets are computed on local time (`started_at AT TIME ZONE tz`): fixed-width spans with
`time_bucket` on TimescaleDB and `date_bin` elsewhere (same origin, so identical buckets),
month spans with calendar arithmetic on both.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

from app.model import rollup
from app.model.query import BucketQuery, Selection, Window
from app.storage.backend import Backend
from app.storage.where import Params

ORIGIN = "timestamp '2000-01-03 00:00:00'"  # a Monday: week buckets start on Mondays
MONTH_ORIGIN_YEAR = 2000


def bucket(q: BucketQuery, p: Params, on: Backend, column: str = "s.started_at") -> str:
    """The local-time bucket of `column` for q's interval and zone."""
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


def inner(window: Window, width: int = rollup.GRAIN_SECONDS) -> Window | None:
    """The whole buckets (15 minutes, or `width` seconds) inside the window, if any."""
    start, end = rollup.grain_up(window.start, width), rollup.grain(window.end, width)
    return Window(start, end) if start < end else None


def edges(window: Window, inside: Window) -> list[Window]:
    """The parts of `window` before and after `inside` (none that are empty)."""
    return [
        w
        for w in (Window(window.start, inside.start), Window(inside.end, window.end))
        if w.start < w.end
    ]


def bucket_rollup_plan(q: BucketQuery) -> tuple[int, Window] | None:
    """(watch class, inner window) when the rollups answer `q` exactly, else None."""
    cls = rollup.threshold_class(q.minimum_watch_seconds)
    if cls is None:
        return None
    whole = rollup_window(q, rollup.GRAIN_SECONDS)
    return None if whole is None else (cls, whole)


def qoe_plan(q: BucketQuery) -> Window | None:
    """The whole hours of the window when the hourly QoE rollups answer `q` exactly."""
    return rollup_window(q, rollup.QOE_GRAIN_SECONDS)


def rollup_window(q: BucketQuery, width: int) -> Window | None:
    """The whole `width`-second UTC buckets of q's window, when rollups at that grain
    re-bucket into q's buckets exactly: no session filter, an interval of whole grains
    (or months), and a zone whose offsets in the window are whole grains."""
    if q.selection.session is not None or q.interval.seconds % width:
        return None
    whole = inner(q.window, width)
    if whole is None:
        return None
    day = 86400
    if not _whole_offsets(
        q.timezone,
        int(q.window.start.timestamp() // day) - 1,
        int(q.window.end.timestamp() // day) + 1,
        width,
    ):
        return None
    return whole


def whole_key(sel: Selection) -> bool:
    """Every video of one ingest key, no other filter."""
    return (
        sel.key is not None and sel.video is None and sel.identifier is None and sel.session is None
    )


def rollup_scope(sel: Selection, p: Params, kind: str) -> tuple[str, list[str]]:
    """The rollup table and condition for a selection: the per-key table when the whole
    key is selected (a few rows per bucket), else the per-video table."""
    if whole_key(sel):
        return f"rollup_key_{kind}", [f"r.key = {p.add(sel.key, 'text')}"]
    return f"rollup_{kind}", p.videos(sel, "r.video_id")


def rollup_where(
    q: BucketQuery, p: Params, kind: str, whole: Window, cls: int | None = None
) -> tuple[str, list[str]]:
    """Table and conditions for the whole buckets of `whole` (and watch class >= cls)."""
    table, conditions = rollup_scope(q.selection, p, kind)
    conditions += p.between("r.bucket", whole)
    if cls is not None:
        conditions.append(f"r.class >= {p.add(cls, 'int')}")
    return table, conditions


def sessions_where(q: BucketQuery, p: Params, windows: list[Window]) -> list[str]:
    """Conditions for the raw path: the selection's sessions started in `windows` that
    reach the threshold."""
    return [
        *p.videos(q.selection, "s.video_id"),
        p.within("s.started_at", windows),
        *p.session_data(q.selection, "s"),
        f"s.watch_seconds >= {p.add(q.minimum_watch_seconds, 'float8')}",
        "s.played",
    ]


async def by_plan(
    window: Window,
    whole: Window | None,
    raw: Callable[[list[Window]], Awaitable[None]],
    from_rollups: Callable[[Window], Awaitable[None]],
) -> None:
    """Answer the whole buckets from the rollups and each partial edge of the window from
    raw rows (one plain time range each: index-friendly); all of it raw without `whole`."""
    if whole is None:
        await raw([window])
        return
    await from_rollups(whole)
    for edge in edges(window, whole):
        await raw([edge])


def plays_plan(q: BucketQuery, use_rollups: bool) -> tuple[int, Window | None]:
    """(watch class, whole buckets) for by_plan: no whole buckets when the rollups cannot
    answer q exactly (or are not to be used)."""
    plan = bucket_rollup_plan(q) if use_rollups else None
    return plan if plan is not None else (0, None)

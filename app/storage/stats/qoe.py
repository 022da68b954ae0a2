"""Quality of experience per bucket (startup, rebuffering, failures, seek latency), over
the views whose client reports it; optionally per browser, platform or device class."""

from __future__ import annotations

import datetime as dt

from app.model import quantiles, rollup
from app.model.query import BucketQuery, Window
from app.model.results import QoeCounts
from app.model.vocabulary import Breakdown
from app.storage import scores
from app.storage.backend import dialect
from app.storage.driver import Connection
from app.storage.stats.common import bucket, by_plan, qoe_plan, rollup_scope
from app.storage.where import Params, where

Groups = dict[dt.datetime, dict[str, QoeCounts]]
N = len(rollup.QOE_COLUMNS)


class _Into:
    """The answer being summed: {bucket: {group: counts}}; the group is "" without a
    breakdown, else the view's (known) class."""

    def __init__(self, breakdown: Breakdown | None) -> None:
        self.breakdown = breakdown
        self.out: Groups = {}

    def group(self, alias: str) -> str:
        """The grouping column: the enum's value, a column name, never client text."""
        return f"{alias}.{self.breakdown.value}" if self.breakdown else "''"

    def __call__(self, at: dt.datetime, value: str) -> QoeCounts:
        group = self.breakdown.class_of(value) if self.breakdown else ""
        return self.out.setdefault(at, {}).setdefault(group, QoeCounts())

    def histogram(self, at: dt.datetime, group: str, kind: int, i: list[int], c: list[int]) -> None:
        counts = self(at, group)
        quantiles.add(
            counts.startup if kind == rollup.STARTUP else counts.seek, dict(zip(i, c, strict=True))
        )


async def qoe(
    conn: Connection,
    q: BucketQuery,
    use_rollups: bool = True,
    breakdown: Breakdown | None = None,
) -> Groups:
    """{bucket: {group: counts}} over the views with QoE data; the group is "" without a
    breakdown, else the view's browser, platform or device class.

    Whole hours of the window come from the hourly rollups when the zone's offsets are
    whole hours; the partial hours at its edges, and everything else, from the sessions."""
    into = _Into(breakdown)

    async def raw(windows: list[Window]) -> None:
        await _raw(conn, q, windows, into)

    async def from_rollups(whole: Window) -> None:
        p = Params()
        at = bucket(q, p, dialect(conn), "r.bucket")
        table, conditions = rollup_scope(q.selection, p, "qoe")
        conditions += p.between("r.bucket", whole)
        await _sums(conn, at, table, where(conditions), p, into)
        if breakdown is None:
            await _histograms(conn, at, f"{table}_hist", where(conditions), p, into)
        else:
            await _class_histograms(conn, at, table, where(conditions), p, into)

    await by_plan(q.window, qoe_plan(q) if use_rollups else None, raw, from_rollups)
    result: Groups = {}
    for b in sorted(into.out):
        groups = {g: v for g, v in into.out[b].items() if v.values[0] > 0}
        if groups:
            result[b] = groups
    return result


async def _raw(conn: Connection, q: BucketQuery, windows: list[Window], into: _Into) -> None:
    p = Params()
    at = bucket(q, p, dialect(conn))
    conditions = [
        *p.videos(q.selection, "s.video_id"),
        p.within("s.started_at", windows),
        *p.session_data(q.selection, "s"),
        "s.qoe",
    ]
    rows = await conn.fetch(
        f"""
        SELECT {at} AS bucket, {into.group("s")}::text AS grp,
               count(*), count(s.startup_ms), sum(s.watch_seconds), sum(s.rebuffer_count),
               sum(s.rebuffer_seconds), count(s.failure),
               count(*) FILTER (WHERE s.failed_before_start),
               count(*) FILTER (WHERE s.exited_before_start),
               count(*) FILTER (WHERE s.seek_count > 0), {", ".join(scores.sums().values())},
               array_agg(s.startup_ms) FILTER (WHERE s.startup_ms IS NOT NULL) AS startups,
               array_agg(s.seek_ms / s.seek_count) FILTER (WHERE s.seek_count > 0) AS seeks
          FROM sessions s {scores.LATERAL}
         WHERE {where(conditions)}
         GROUP BY 1, 2
        """,
        *p.values,
    )
    for r in rows:
        into(r["bucket"], r["grp"]).merge(
            QoeCounts(
                [float(r[2 + i] or 0) for i in range(N)],
                quantiles.histogram(r["startups"] or ()),
                quantiles.histogram(r["seeks"] or ()),
            )
        )


async def _sums(
    conn: Connection, at: str, table: str, condition: str, p: Params, into: _Into
) -> None:
    sums = ", ".join(f"sum(r.{c})" for c in rollup.QOE_COLUMNS)
    for r in await conn.fetch(
        f"SELECT {at} AS bucket, {into.group('r')}::text AS grp, {sums} "
        f"FROM {table} r WHERE {condition} GROUP BY 1, 2",
        *p.values,
    ):
        into(r["bucket"], r["grp"]).merge(QoeCounts([float(r[2 + i]) for i in range(N)]))


async def _histograms(
    conn: Connection, at: str, hist: str, condition: str, p: Params, into: _Into
) -> None:
    """Totals: the histogram rows (rollup_qoe_hist or rollup_key_qoe_hist), a plain GROUP
    BY, and each bucket's histogram returned as two arrays (a few rows, not one per
    bucket)."""
    for r in await conn.fetch(
        f"SELECT bucket, kind, array_agg(i ORDER BY i) AS i, "
        f"array_agg(c ORDER BY i) AS c FROM ("
        f"SELECT {at} AS bucket, r.metric AS kind, r.idx AS i, "
        f"sum(r.views)::int AS c FROM {hist} r WHERE {condition} "
        f"GROUP BY 1, 2, 3) h WHERE c <> 0 GROUP BY 1, 2",
        *p.values,
    ):
        into.histogram(r["bucket"], "", r["kind"], r["i"], r["c"])


async def _class_histograms(
    conn: Connection, at: str, table: str, condition: str, p: Params, into: _Into
) -> None:
    """Per class: the arrays of the class rows, summed per bucket, class and index, and
    each (bucket, class) histogram returned as two arrays."""
    unnested = " UNION ALL ".join(
        f"SELECT {at} AS bucket, {into.group('r')}::text AS grp, {kind} AS kind, i, "
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
        into.histogram(r["bucket"], r["grp"], r["kind"], r["i"], r["c"])

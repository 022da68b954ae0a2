"""How far views got: milestones (25 … 100 %), finishes and the share watched, per device."""

from __future__ import annotations

import datetime as dt

from app.model import rollup
from app.model.query import BucketQuery, Window
from app.model.results import CompletionCounts
from app.model.vocabulary import DEVICES
from app.storage.backend import dialect
from app.storage.driver import Connection
from app.storage.rollups import DISTINCT_SECONDS
from app.storage.stats.common import bucket, by_plan, plays_plan, rollup_where, sessions_where
from app.storage.where import Params, where

Devices = dict[dt.datetime, dict[str, CompletionCounts]]


async def completion(conn: Connection, q: BucketQuery, use_rollups: bool = True) -> Devices:
    """{bucket: {device: counts}} for the views of the selection."""
    out: Devices = {}
    cls, whole = plays_plan(q, use_rollups)

    def add(at: dt.datetime, device: str, values: list[float]) -> None:
        entry = out.setdefault(at, {}).setdefault(device, CompletionCounts())
        for i, value in enumerate(values):
            entry.values[i] += value

    async def raw(windows: list[Window]) -> None:
        p = Params()
        at = bucket(q, p, dialect(conn))
        conditions = sessions_where(q, p, windows)
        known = "s.duration > 0"
        reached = ", ".join(
            f"count(*) FILTER (WHERE {known} AND s.furthest / s.duration >= "
            f"{p.add(m / 100, 'float8')})"
            for m in rollup.MILESTONES
        )
        devices = p.add(list(DEVICES), "text[]")
        rows = await conn.fetch(
            f"""
            SELECT {at} AS bucket,
                   CASE WHEN s.device = ANY({devices}) THEN s.device ELSE 'other' END AS device,
                   count(*), count(*) FILTER (WHERE {known}), {reached},
                   count(*) FILTER (WHERE {known} AND (s.ended OR s.furthest >= s.duration - 1)),
                   coalesce(sum(least(1.0, {DISTINCT_SECONDS} / s.duration))
                            FILTER (WHERE {known}), 0)
              FROM sessions s
             WHERE {where(conditions)}
             GROUP BY 1, 2
            """,
            *p.values,
        )
        for r in rows:
            add(r["bucket"], r["device"], [float(r[i]) for i in range(2, len(r))])

    async def from_rollups(inside: Window) -> None:
        p = Params()
        at = bucket(q, p, dialect(conn), "r.bucket")
        table, conditions = rollup_where(q, p, "completion", inside, cls)
        sums = ", ".join(f"sum(r.{c})" for c in [*rollup.COMPLETION_COLUMNS, "percent_sum"])
        for r in await conn.fetch(
            f"SELECT {at} AS bucket, r.device, {sums} FROM {table} r "
            f"WHERE {where(conditions)} GROUP BY 1, 2",
            *p.values,
        ):
            add(r["bucket"], r["device"], [float(r[i]) for i in range(2, len(r))])

    await by_plan(q.window, whole, raw, from_rollups)
    return {
        b: {d: c for d, c in devices.items() if c.values[0] > 0}
        for b, devices in sorted(out.items())
        if any(c.values[0] > 0 for c in devices.values())
    }

"""Views per page (the page URL a session played on, scheme + host + path)."""

from __future__ import annotations

import datetime as dt

from app.model import rollup
from app.model.query import BucketQuery, Window
from app.storage.backend import dialect
from app.storage.driver import Connection
from app.storage.stats.common import (
    bucket,
    bucket_rollup_plan,
    edges,
    rollup_window,
    sessions_where,
    whole_key,
)
from app.storage.where import Params, where


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
        cls, whole = plan
        windows = edges(q.window, whole)  # raw: the partial quarter hours at the ends
        parts = _rollup_parts(conn, q, p, rollup.REACHED_COLUMNS[cls], whole)
    for window in windows:  # one plain time range each: index-friendly
        at = bucket(q, p, dialect(conn))
        conditions = [*sessions_where(q, p, [window]), "s.page IS NOT NULL"]
        parts.append(
            f"SELECT {at} AS bucket, s.page, 1 AS views FROM sessions s WHERE {where(conditions)}"
        )
    rows = await conn.fetch(
        f"SELECT bucket, page, sum(views)::int8 AS views "
        f"FROM ({' UNION ALL '.join(parts)}) AS u GROUP BY 1, 2 HAVING sum(views) > 0 "
        f'ORDER BY 1, 3 DESC, page COLLATE "C"',
        *p.values,
    )
    return [(r[0], r[1], r[2]) for r in rows]


def _rollup_parts(
    conn: Connection, q: BucketQuery, p: Params, reached: str, whole: Window
) -> list[str]:
    """SELECTs of (bucket, page, views) over the whole buckets: a whole key's hourly rows
    and the quarter hours around them, else the per-video quarter hours. `reached` is a
    constant column name (the watch class's), not user text."""
    parts = []
    quarters = [whole]  # per video, 15 minutes (for a whole key: its videos)
    hourly = rollup_window(q, rollup.KEY_SOURCES_GRAIN_SECONDS)
    if whole_key(q.selection) and hourly is not None:
        quarters = edges(whole, hourly)
        conditions = [f"r.key = {p.add(q.selection.key, 'text')}", *p.between("r.bucket", hourly)]
        parts.append(
            f"SELECT {bucket(q, p, dialect(conn), 'r.bucket')} AS bucket, r.page, "
            f"r.{reached} AS views FROM rollup_key_sources r WHERE {where(conditions)}"
        )
    for window in quarters:
        conditions = [*p.videos(q.selection, "r.video_id"), *p.between("r.bucket", window)]
        parts.append(
            f"SELECT {bucket(q, p, dialect(conn), 'r.bucket')} AS bucket, r.page, "
            f"r.{reached} AS views FROM rollup_sources r WHERE {where(conditions)}"
        )
    return parts

"""JSON shapes of the query API's answers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.model import BROWSERS, DEVICES, PLATFORMS
from app.storage.rollups import BREAKDOWN_COLUMNS
from app.storage.stats import PlaysBucket


def label(bucket: dt.datetime) -> str:
    """ISO-8601 without offset, microsecond precision (bucket is local time)."""
    return bucket.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _seconds(value: float) -> float:
    return round(value, 3)


def plays(buckets: list[PlaysBucket]) -> dict[str, Any]:
    views = []
    for b in buckets:
        counts = dict(zip(BREAKDOWN_COLUMNS, b.counts, strict=True))
        views.append({
            "interval": label(b.bucket), "views": b.views,
            "total_view_time": _seconds(b.watch_seconds),
            "browser": {x: counts[f"browser_{x}"] for x in BROWSERS},
            "device_type": {x: counts[f"device_{x}"] for x in DEVICES},
            "platform": {x: counts[f"platform_{x}"] for x in PLATFORMS},
        })
    return {"views": views}


def sources(rows: list[tuple[dt.datetime, str, int]]) -> dict[str, Any]:
    return {"sources": [{"interval": label(b), "path": page, "views": views}
                        for b, page, views in rows]}


def engagement(total: float | None, ranges: int, counts: dict[int, int]) -> dict[str, Any]:
    if total is None:
        return {"engagement": []}
    step = total / ranges
    return {"engagement": [
        {"range": r, "range_time": {"from": _seconds(r * step), "to": _seconds((r + 1) * step)},
         "viewers": counts.get(r, 0)}
        for r in range(ranges)
    ]}

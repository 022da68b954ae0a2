"""JSON shapes of the query API's answers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.model import BROWSERS, DEVICES, PLATFORMS
from app.storage.stats import PlaysRow


def label(bucket: dt.datetime) -> str:
    """ISO-8601 without offset, microsecond precision (bucket is local time)."""
    return bucket.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _seconds(value: float) -> float:
    return round(value, 3)


def plays(rows: list[PlaysRow]) -> dict[str, Any]:
    buckets: dict[dt.datetime, dict[str, Any]] = {}
    for row in rows:
        entry = buckets.get(row.bucket)
        if entry is None:
            entry = buckets[row.bucket] = {
                "interval": label(row.bucket), "views": 0, "total_view_time": 0.0,
                "browser": dict.fromkeys(BROWSERS, 0),
                "device_type": dict.fromkeys(DEVICES, 0),
                "platform": dict.fromkeys(PLATFORMS, 0),
            }
        entry["views"] += row.views
        entry["total_view_time"] += row.watch_seconds
        entry["browser"][row.browser if row.browser in BROWSERS else "other"] += row.views
        entry["device_type"][row.device if row.device in DEVICES else "other"] += row.views
        entry["platform"][row.platform if row.platform in PLATFORMS else "other"] += row.views
    for entry in buckets.values():
        entry["total_view_time"] = _seconds(entry["total_view_time"])
    return {"views": [buckets[b] for b in sorted(buckets)]}


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

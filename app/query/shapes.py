"""JSON shapes of the query API's answers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.model import quantiles
from app.model.query import DEFAULT_SLOW_START_SECONDS
from app.model.results import (
    SCORE_NAMES,
    CompletionCounts,
    EventEntry,
    KeyRow,
    PlaysBucket,
    QoeCounts,
    Summary,
    VideoTotals,
    score_dict,
)
from app.model.rollup import COMPLETION_COLUMNS, MILESTONES, QOE_COLUMNS
from app.model.scores import SCORES
from app.model.vocabulary import DEVICES, Breakdown
from app.query.params import make_cursor


def label(bucket: dt.datetime) -> str:
    """ISO-8601 without offset, microsecond precision (bucket is local time)."""
    return bucket.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _seconds(value: float) -> float:
    return round(value, 3)


def plays(buckets: list[PlaysBucket]) -> dict[str, Any]:
    views = []
    for b in buckets:
        views.append(
            {
                "interval": label(b.bucket),
                "views": b.views,
                "total_view_time": _seconds(b.watch_seconds),
                "browser": b.by(Breakdown.BROWSER),
                "device_type": b.by(Breakdown.DEVICE),
                "platform": b.by(Breakdown.PLATFORM),
                "impressions": b.impressions,
                "play_rate": round(b.views / b.impressions, 4) if b.impressions else None,
            }
        )
    return {"views": views}


def _completion_figures(values: list[float]) -> dict[str, Any]:
    n = len(COMPLETION_COLUMNS)
    counts = dict(zip(COMPLETION_COLUMNS, (int(v) for v in values[:n]), strict=True))
    known = counts["known"]
    return {
        "views": counts["views"],
        "views_with_duration": known,
        "reached": {str(m): counts[f"reached_{m}"] for m in MILESTONES},
        "finishes": counts["finishes"],
        "finish_rate": round(counts["finishes"] / known, 4) if known else None,
        "average_percent_watched": round(100 * values[n] / known, 2) if known else None,
    }


def completion(buckets: dict[dt.datetime, dict[str, CompletionCounts]]) -> dict[str, Any]:
    out = []
    for bucket, devices in buckets.items():
        total = [0.0] * (len(COMPLETION_COLUMNS) + 1)
        for counts in devices.values():
            total = [a + b for a, b in zip(total, counts.values, strict=True)]
        empty = [0.0] * (len(COMPLETION_COLUMNS) + 1)
        out.append(
            {
                "interval": label(bucket),
                **_completion_figures(total),
                "device_type": {
                    d: _completion_figures(devices[d].values if d in devices else empty)
                    for d in DEVICES
                },
            }
        )
    return {"completion": out}


def sources(rows: list[tuple[dt.datetime, str, int]]) -> dict[str, Any]:
    labels: dict[dt.datetime, str] = {}  # a month of hours: ~700 buckets, ~10,000 rows
    return {
        "sources": [
            {
                "interval": labels.get(b) or labels.setdefault(b, label(b)),
                "path": page,
                "views": views,
            }
            for b, page, views in rows
        ]
    }


def engagement(
    total: float | None, ranges: int, counts: dict[int, int], sessions: int | None = None
) -> dict[str, Any]:
    """sessions given (normalize=sessions): each range also carries `share`, the part of
    the selected sessions that watched it (0..1)."""
    if total is None:
        return {"engagement": []}
    step = total / ranges
    out = []
    for r in range(ranges):
        entry: dict[str, Any] = {
            "range": r,
            "range_time": {"from": _seconds(r * step), "to": _seconds((r + 1) * step)},
            "viewers": counts.get(r, 0),
        }
        if sessions is not None:
            entry["share"] = round(counts.get(r, 0) / sessions, 4) if sessions else 0.0
        out.append(entry)
    return {"engagement": out}


def _share(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 2) if whole > 0 else None


def qoe_figures(c: QoeCounts) -> dict[str, Any]:
    """The QoE figures of a set of views (definitions: docs/api.md, /api/v1/qoe)."""
    v = dict(zip(QOE_COLUMNS, c.values, strict=True))
    views, watch, stalled = int(v["views"]), v["watch_seconds"], v["rebuffer_seconds"]
    p50, p95 = quantiles.quantiles(c.startup, (0.5, 0.95))
    return {
        "views": views,
        "startup_time_ms": {"p50": p50, "p95": p95, "views": int(v["startups"])},
        "rebuffer_percentage": _share(stalled, watch + stalled),
        "rebuffer_frequency": round(v["rebuffer_count"] / (watch / 60), 4) if watch > 0 else None,
        "rebuffer_count": int(v["rebuffer_count"]),
        "rebuffer_seconds": _seconds(stalled),
        "watch_seconds": _seconds(watch),
        "playback_failure_percentage": _share(v["failures"], views),
        "startup_failure_percentage": _share(v["startup_failures"], views),
        "exits_before_start_percentage": _share(v["exits"], views),
        "seek_latency_ms": {"p50": quantiles.quantile(c.seek, 0.5), "views": int(v["seek_views"])},
        "scores": score_dict(
            tuple(
                v[f"{name}_score"] / v[f"{name}_views"] if v[f"{name}_views"] > 0 else None
                for name in SCORES
            )
        ),
        "scored_views": {SCORE_NAMES[name]: int(v[f"{name}_views"]) for name in SCORES},
    }


def qoe(
    buckets: dict[dt.datetime, dict[str, QoeCounts]], breakdown: Breakdown | None
) -> dict[str, Any]:
    """buckets: per bucket, the counts per group ("" without a breakdown)."""
    out = []
    for bucket, groups in buckets.items():
        total = QoeCounts()
        for counts in groups.values():
            total.merge(counts)
        entry = {"interval": label(bucket), **qoe_figures(total)}
        if breakdown is not None:
            entry["breakdown"] = {name: qoe_figures(groups[name]) for name in sorted(groups)}
        out.append(entry)
    return {"qoe": out}


def videos(rows: list[VideoTotals]) -> dict[str, Any]:
    return {
        "videos": [
            {
                "video": r.metadata,
                "identifier": r.identifier,
                "views": r.views,
                "total_view_time": round(r.watch_seconds, 3),
            }
            for r in rows
        ]
    }


def listed(s: Summary, slow_start_seconds: float = DEFAULT_SLOW_START_SECONDS) -> dict[str, Any]:
    """A session as the session list and its detail show it: its summary and its issues."""
    return {**s.to_dict(), "issues": s.issues(slow_start_seconds)}


def sessions_page(
    rows: list[Summary], limit: int, slow_start_seconds: float = DEFAULT_SLOW_START_SECONDS
) -> dict[str, Any]:
    """One page of the session list from up to limit + 1 rows (one more: there is a next
    page, and `next` is its cursor)."""
    page = rows[:limit]
    more = len(rows) > limit
    return {
        "sessions": [listed(s, slow_start_seconds) for s in page],
        "next": make_cursor(page[-1].started_at, page[-1].session) if more else None,
    }


def one_session(summary: Summary, events: list[EventEntry]) -> dict[str, Any]:
    start = summary.started_at
    return {
        "session": listed(summary),
        "events": [
            {
                "at_ms": round((e.at - start).total_seconds() * 1000, 1),
                "name": e.name,
                "payload": e.payload or {},
            }
            for e in events
        ],
    }


def watching(count: int) -> dict[str, Any]:
    return {"watching": count}


def key(row: KeyRow) -> dict[str, Any]:
    return {"key": row.key, "disabled_at": row.disabled_at.isoformat() if row.disabled_at else None}


def keys(rows: list[KeyRow]) -> dict[str, Any]:
    return {"keys": [key(r) for r in rows]}


def message(text: str) -> dict[str, Any]:
    return {"message": text}

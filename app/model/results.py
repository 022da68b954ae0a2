"""What storage answers the query API with, before the API shapes it into JSON."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from app.model import quantiles, scores
from app.model.query import DEFAULT_SLOW_START_SECONDS, Issue
from app.model.rollup import BREAKDOWN_COLUMNS, COMPLETION_COLUMNS, QOE_COLUMNS, Qoe
from app.model.vocabulary import Breakdown

_COLUMN_AT = {c: i for i, c in enumerate(BREAKDOWN_COLUMNS)}


@dataclass(slots=True)
class PlaysBucket:
    """One bucket of /plays: views, watch seconds, and counts per BREAKDOWN_COLUMNS."""

    bucket: dt.datetime
    views: int = 0
    watch_seconds: float = 0.0
    counts: list[int] = field(default_factory=lambda: [0] * len(BREAKDOWN_COLUMNS))
    impressions: int = 0

    def count(self, browser: str, platform: str, device: str, views: int) -> None:
        """Add views of one device class combination (unknown classes count as other)."""
        for kind, value in (("browser", browser), ("platform", platform), ("device", device)):
            at = _COLUMN_AT.get(f"{kind}_{value}")
            self.counts[_COLUMN_AT[f"{kind}_other"] if at is None else at] += views

    def by(self, kind: Breakdown) -> dict[str, int]:
        """Views per class of one kind, in the vocabulary's order."""
        return {c: self.counts[_COLUMN_AT[f"{kind.value}_{c}"]] for c in kind.classes}


@dataclass(slots=True)
class CompletionCounts:
    """Per bucket and device: COMPLETION_COLUMNS, then the sum of fractions watched."""

    values: list[float] = field(default_factory=lambda: [0.0] * (len(COMPLETION_COLUMNS) + 1))


@dataclass(slots=True)
class QoeCounts:
    """QoE sums per QOE_COLUMNS, and the startup / seek-latency histograms."""

    values: list[float] = field(default_factory=lambda: [0.0] * len(QOE_COLUMNS))
    startup: dict[int, int] = field(default_factory=dict)
    seek: dict[int, int] = field(default_factory=dict)

    def merge(self, other: QoeCounts) -> None:
        for i, value in enumerate(other.values):
            self.values[i] += value
        quantiles.add(self.startup, other.startup)
        quantiles.add(self.seek, other.seek)


@dataclass(frozen=True, slots=True)
class VideoTotals:
    video_id: int
    identifier: str | None
    metadata: Any
    views: int
    watch_seconds: float


Engagement = tuple[float | None, dict[int, int]]  # (timeline length, {range: viewers})


# the fields of a session summary, in the order every export format writes them
SUMMARY_COLUMNS = (
    "session",
    "started_at",
    "ended_at",
    "identifier",
    "metadata",
    "browser",
    "platform",
    "device",
    "page",
    "duration",
    "watch_seconds",
    "furthest",
    "watched",
    "played",
    "qoe",
)


@dataclass(frozen=True, slots=True)
class Summary:
    """What an export says about one session: nothing that identifies a person."""

    session: int
    started_at: dt.datetime
    ended_at: dt.datetime | None
    identifier: str | None
    metadata: Any
    browser: str
    platform: str
    device: str
    page: str | None
    duration: float | None
    watch_seconds: float
    furthest: float
    watched: list[tuple[float, float]]  # merged media ranges, in order
    played: bool = True  # False: playback requested (or failed) but never started
    qoe: Qoe | None = None  # None: the client reported no QoE

    def issues(self, slow_start_seconds: float = DEFAULT_SLOW_START_SECONDS) -> list[str]:
        """The view's issues (Issue values, in the enum's order): what its QoE summary
        says went wrong; none without QoE data."""
        q = self.qoe
        if q is None:
            return []
        found = {
            Issue.FAILED: q.failure is not None,
            Issue.STARTUP_FAILURE: q.failed_before_start,
            Issue.EXIT_BEFORE_START: q.exited_before_start,
            Issue.STALLED: q.rebuffer_count >= 1,
            Issue.SLOW_START: q.startup_ms is not None and q.startup_ms > slow_start_seconds * 1000,
            Issue.LOW_QUALITY: q.upscale_max is not None
            and q.upscale_max > scores.LOW_QUALITY_UPSCALE,
        }
        return [issue.value for issue, yes in found.items() if yes]

    @property
    def idempotency_key(self) -> str:
        return f"session-{self.session}-{int(self.started_at.timestamp() * 1e6)}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of a summary (NDJSON export, webhook)."""
        return {
            "session": self.session,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "identifier": self.identifier,
            "metadata": self.metadata,
            "browser": self.browser,
            "platform": self.platform,
            "device": self.device,
            "page": self.page,
            "duration": self.duration,
            "watch_seconds": round(self.watch_seconds, 3),
            "furthest": round(self.furthest, 3),
            "watched": [[a, b] for a, b in self.watched],
            "played": self.played,
            "qoe": qoe_dict(self.qoe, self.watch_seconds, self.played),
        }


def qoe_dict(q: Qoe | None, watch_seconds: float, played: bool) -> dict[str, Any] | None:
    """A view's QoE summary and scores as JSON (None without QoE data)."""
    if q is None:
        return None
    latency = q.seek_latency_ms
    mean = q.upscale_sum / q.upscale_seconds if q.upscale_seconds > 0 else None
    view = scores.of_view(q, watch_seconds, played)
    return {
        "startup_ms": None if q.startup_ms is None else round(q.startup_ms, 1),
        "rebuffer_count": q.rebuffer_count,
        "rebuffer_seconds": round(q.rebuffer_seconds, 3),
        "seek_count": q.seek_count,
        "seek_latency_ms": None if latency is None else round(latency, 1),
        "failure": q.failure,
        "failed_before_start": q.failed_before_start,
        "exited_before_start": q.exited_before_start,
        "upscale_max_percentage": None if q.upscale_max is None else round(100 * q.upscale_max, 2),
        "upscale_mean_percentage": None if mean is None else round(100 * mean, 2),
        "scores": score_dict(view.as_tuple()),
    }


SCORE_NAMES = {
    "success": "playback_success",
    "startup": "startup_time",
    "smooth": "smoothness",
    "quality": "video_quality",
    "experience": "viewer_experience",
}


def score_dict(values: tuple[float | None, ...]) -> dict[str, float | None]:
    """Scores (scores.SCORES order) under their API names, to 2 decimals."""
    return {
        SCORE_NAMES[name]: None if v is None else round(v, 2)
        for name, v in zip(scores.SCORES, values, strict=True)
    }


@dataclass(frozen=True, slots=True)
class EventEntry:
    at: dt.datetime
    name: str
    payload: Any


@dataclass(frozen=True)
class KeyRow:
    key: str
    created_at: dt.datetime
    disabled_at: dt.datetime | None

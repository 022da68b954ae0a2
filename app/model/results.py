"""What storage answers the query API with, before the API shapes it into JSON."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from app.model import sketch
from app.model.rollup import BREAKDOWN_COLUMNS, COMPLETION_COLUMNS, QOE_COLUMNS
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
        sketch.add(self.startup, other.startup)
        sketch.add(self.seek, other.seek)


@dataclass(frozen=True, slots=True)
class VideoTotals:
    video_id: int
    identifier: str | None
    metadata: Any
    views: int
    watch_seconds: float


Engagement = tuple[float | None, dict[int, int]]  # (timeline length, {range: viewers})

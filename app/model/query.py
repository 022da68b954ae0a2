"""The query model: what is selected, over which window, bucketed how. The query API
builds these from requests; storage answers them."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Span:
    """A calendar span: whole months, or a fixed number of seconds (exactly one is set)."""

    months: int = 0
    seconds: int = 0

    def before(self, end: dt.datetime) -> dt.datetime:
        if self.seconds:
            return end - dt.timedelta(seconds=self.seconds)
        total = end.year * 12 + end.month - 1 - self.months
        year, month = divmod(total, 12)
        month += 1
        days = [31, 29 if _leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        return end.replace(year=year, month=month, day=min(end.day, days[month - 1]))


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@dataclass(frozen=True, slots=True)
class Selection:
    video: dict[str, Any] | None = None
    session: dict[str, Any] | None = None
    key: str | None = None
    identifier: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    start: dt.datetime  # inclusive, UTC
    end: dt.datetime  # exclusive, UTC


@dataclass(frozen=True, slots=True)
class BucketQuery:
    selection: Selection
    window: Window
    interval: Span
    timezone: str
    minimum_watch_seconds: float


@dataclass(frozen=True, slots=True)
class ExportQuery:
    selection: Selection
    window: Window
    format: str  # ndjson, csv or parquet


@dataclass(frozen=True, slots=True)
class EngagementQuery:
    selection: Selection
    window: Window
    ranges: int
    normalize: str | None = None  # "sessions": also each range's share of the sessions


class Issue(enum.StrEnum):
    """What went wrong in a view (the session list's `issue` filter; docs/api.md)."""

    FAILED = "failed"  # a fatal playback error, before or after the first frame
    STARTUP_FAILURE = "startup_failure"  # the error came before the first frame
    EXIT_BEFORE_START = "exit_before_start"  # asked to play, left before the first frame
    STALLED = "stalled"  # at least one rebuffering
    SLOW_START = "slow_start"  # the first frame took longer than a threshold (default 4 s)
    LOW_QUALITY = "low_quality"  # a rendition shown enlarged above 1.25× (upscaled)


DEFAULT_SLOW_START_SECONDS = 4.0


@dataclass(frozen=True, slots=True)
class SessionsQuery:
    selection: Selection
    window: Window
    limit: int
    before: tuple[dt.datetime, int] | None = None  # (started_at, id) of the last one shown
    issue: Issue | None = None
    slow_start_seconds: float = DEFAULT_SLOW_START_SECONDS

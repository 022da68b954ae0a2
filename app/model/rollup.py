"""The rollups' vocabulary and arithmetic: what one session contributes to the aggregates
(State, Qoe), how a batch's changes sum up (Deltas), the watch classes, completion
milestones, QoE sums and engagement ranges. Pure: no database here; app/storage/rollups.py
turns Deltas into SQL, and its docstring describes the tables.

Every IANA offset is a multiple of 15 minutes, so 15-minute UTC buckets re-bucket exactly
into any time zone for intervals that are whole multiples of 15 minutes (or months).
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.model import quantiles, scores
from app.model.scores import SCORES
from app.model.vocabulary import BROWSERS, DEVICES, PLATFORMS

GRAIN_SECONDS = 900


# QoE rollups are hourly: their histograms have many rows per bucket, and an hour grain
# answers every zone with whole-hour offsets (the others use the raw path)
QOE_GRAIN_SECONDS = 3600


# Sources per ingest key are hourly too: a month of a key's pages per 15 minutes is ~40,000
# rows to read for an hourly answer; hours are a quarter of that. Questions an hour grain
# cannot answer (15-minute intervals, zones with :30/:45 offsets) sum the per-video rows.
KEY_SOURCES_GRAIN_SECONDS = 3600


WATCH_BOUNDS = (1, 2, 3, 5, 10, 30, 60)


ENGAGEMENT_RANGES = (10, 20, 50, 100)


UNKNOWN_DURATION = -1.0


BREAKDOWN_COLUMNS = (
    [f"browser_{b}" for b in BROWSERS]
    + [f"platform_{p}" for p in PLATFORMS]
    + [f"device_{d}" for d in DEVICES]
)


REACHED_COLUMNS = [f"reached_{k}" for k in range(1 + len(WATCH_BOUNDS))]


STARTUP, SEEK = 0, 1  # the `metric` of rollup_qoe_hist rows


# completion per (owner, bucket, watch class, device): views, views whose duration is known,
# views that reached 25/50/75/95/100 % of it, finishes; plus the sum of % watched
MILESTONES = (25, 50, 75, 95, 100)


COMPLETION_COLUMNS = ["views", "known", *[f"reached_{m}" for m in MILESTONES], "finishes"]


# QoE per (owner, bucket, browser, platform, device), views with QoE data only: views,
# views with a startup time, their watch seconds, rebuffer events and seconds, failed views,
# views failed before the first frame, exits before start, views with seeks; plus the
# startup-time histogram and the histogram of each view's mean seek latency (app/model/quantiles.py)
QOE_COLUMNS = [
    "views",
    "startups",
    "watch_seconds",
    "rebuffer_count",
    "rebuffer_seconds",
    "failures",
    "startup_failures",
    "exits",
    "seek_views",
    # the scores (app/model/scores.py): per score, the views it applies to and their sum
    *[c for name in SCORES for c in (f"{name}_views", f"{name}_score")],
]


def qoe_float(column: str) -> bool:
    """Whether a QOE_COLUMNS column holds a float8 (seconds, score sums), else an int."""
    return column.endswith(("seconds", "score"))


_BROWSER_AT = {b: i for i, b in enumerate(BROWSERS)}


_PLATFORM_AT = {p: len(BROWSERS) + i for i, p in enumerate(PLATFORMS)}


_DEVICE_AT = {d: len(BROWSERS) + len(PLATFORMS) + i for i, d in enumerate(DEVICES)}


def watch_class(watch_seconds: float) -> int:
    """How many of WATCH_BOUNDS the watch time reaches (0..len(WATCH_BOUNDS))."""
    return bisect.bisect_right(WATCH_BOUNDS, watch_seconds)


def threshold_class(threshold: float) -> int | None:
    """The smallest watch class whose sessions all reach `threshold`, if that is exact."""
    if threshold == 0:
        return 0
    if threshold in WATCH_BOUNDS:
        return WATCH_BOUNDS.index(int(threshold)) + 1
    return None


def grain(moment: dt.datetime, width: int = GRAIN_SECONDS) -> dt.datetime:
    """The UTC bucket (15 minutes, or `width` seconds) a moment falls in."""
    seconds = math.floor(moment.timestamp() / width) * width
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def at_epoch(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def grain_up(moment: dt.datetime, width: int = GRAIN_SECONDS) -> dt.datetime:
    down = grain(moment, width)
    return down if down == moment else down + dt.timedelta(seconds=width)


def merge_islands(
    islands: list[float] | None,
    spans: Iterable[tuple[float, float]],
) -> list[float]:
    """Merged watched media ranges, flattened [a1, b1, a2, b2, ...], sorted. Only spans with
    to > from count (as in the engagement query)."""
    known = islands or []
    pairs = [(known[i], known[i + 1]) for i in range(0, len(known), 2)]
    pairs += [(a, b) for a, b in spans if b > a]
    pairs.sort()
    merged: list[list[float]] = []
    for a, b in pairs:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [x for pair in merged for x in pair]


def covered_ranges(islands: list[float], length: float, ranges: int) -> set[int]:
    """Range indexes a session's islands touch: the raw engagement query's arithmetic
    (first = floor(from / (L / R)), last = ceil(to / (L / R)) - 1, clamped), in float8."""
    if length <= 0:
        return set()
    step = length / ranges
    out: set[int] = set()
    for i in range(0, len(islands), 2):
        first = max(0, math.floor(islands[i] / step))
        last = min(ranges - 1, math.ceil(islands[i + 1] / step) - 1)
        out.update(range(first, last + 1))
    return out


@dataclass(frozen=True, slots=True)
class Qoe:
    """A view's quality of experience so far (see docs/api.md for the definitions)."""

    startup_ms: float | None = None
    rebuffer_count: int = 0
    rebuffer_seconds: float = 0.0
    seek_count: int = 0
    seek_ms: float = 0.0
    failure: int | None = None  # MediaError code (0: unknown) of a fatal error
    failed_before_start: bool = False
    exited_before_start: bool = False
    quick_exit: bool = False  # the exit before start came within 1 s of the request
    # upscaling while playing (app/model/scores.py): the largest upscale shown, and the
    # upscale integrated over the seconds it was shown (upscale · s), over those seconds
    upscale_max: float | None = None
    upscale_sum: float = 0.0
    upscale_seconds: float = 0.0

    @property
    def seek_latency_ms(self) -> float | None:
        return self.seek_ms / self.seek_count if self.seek_count else None


@dataclass(frozen=True, slots=True)
class State:
    """What one session contributes to the rollups."""

    key: str
    video_id: int
    started_at: dt.datetime
    browser: str
    platform: str
    device: str
    page: str | None
    watch_seconds: float
    duration: float | None
    islands: tuple[float, ...]
    furthest: float = 0.0
    ended: bool = False
    played: bool = True
    qoe: Qoe | None = None

    @property
    def distinct_seconds(self) -> float:
        """Seconds of distinct media watched (the islands' total length)."""
        return sum(self.islands[i + 1] - self.islands[i] for i in range(0, len(self.islands), 2))


Key = tuple[Any, ...]  # (owner — a video id or an ingest key —, bucket, ...)


class Deltas:
    """Changes to the rollups, summed per key, for one batch."""

    def __init__(self) -> None:
        # keys: (video id, bucket start in epoch seconds, ...); the key_ tables the same per
        # ingest key: (key, bucket, ...) — so a key is typed by its shape only (Key)
        self.plays: dict[Key, list[float]] = {}  # (owner, bucket, watch class)
        self.sources: dict[Key, list[int]] = {}  # (owner, bucket, page)
        self.engagement: dict[tuple[int, float, int, float], list[int]] = {}
        self.key_plays: dict[Key, list[float]] = {}
        self.key_sources: dict[Key, list[int]] = {}
        self.impressions: dict[Key, int] = {}  # (owner, bucket)
        self.key_impressions: dict[Key, int] = {}
        self.completion: dict[Key, list[float]] = {}  # (owner, bucket, class, device)
        self.key_completion: dict[Key, list[float]] = {}
        # (owner, bucket, browser, platform, device) -> QOE_COLUMNS, startup and seek hists
        self.qoe: dict[tuple[Any, ...], QoeSums] = {}
        self.key_qoe: dict[tuple[Any, ...], QoeSums] = {}
        # (owner, hour, metric, histogram bucket) -> views
        self.qoe_hist: dict[tuple[Any, float, int, int], int] = {}
        self.key_qoe_hist: dict[tuple[Any, float, int, int], int] = {}

    def impression(self, key: str, video_id: int, at: dt.datetime) -> None:
        moment = at.timestamp()
        bucket = moment - moment % GRAIN_SECONDS
        self.impressions[(video_id, bucket)] = self.impressions.get((video_id, bucket), 0) + 1
        self.key_impressions[(key, bucket)] = self.key_impressions.get((key, bucket), 0) + 1

    def add(self, s: State, sign: int, engagement: bool = True) -> None:
        # hot in bulk loads: keys hold the bucket as epoch seconds (a datetime at write time)
        moment = s.started_at.timestamp()
        bucket = moment - moment % GRAIN_SECONDS
        if s.qoe is not None:
            self._add_qoe(s, s.qoe, moment - moment % QOE_GRAIN_SECONDS, sign)
        if not s.played:  # a view that never started: QoE only, not a play
            return
        cls = bisect.bisect_right(WATCH_BOUNDS, s.watch_seconds)
        columns = (
            2 + _BROWSER_AT.get(s.browser, _BROWSER_AT["other"]),
            2 + _PLATFORM_AT.get(s.platform, _PLATFORM_AT["other"]),
            2 + _DEVICE_AT.get(s.device, _DEVICE_AT["other"]),
        )
        for table, key in (
            (self.plays, (s.video_id, bucket, cls)),
            (self.key_plays, (s.key, bucket, cls)),
        ):
            plays = table.get(key)
            if plays is None:
                plays = table[key] = [0.0] * (3 + len(BREAKDOWN_COLUMNS))
            plays[0] += sign
            plays[1] += sign * s.watch_seconds
            for column in columns:
                plays[column] += sign
            if sign > 0:  # one more write of a session in this bucket (see CHANGES)
                plays[-1] += 1
        if s.page is not None:
            hour = moment - moment % KEY_SOURCES_GRAIN_SECONDS
            for pages, at in (
                (self.sources, (s.video_id, bucket, s.page)),
                (self.key_sources, (s.key, hour, s.page)),
            ):
                reached = pages.get(at)
                if reached is None:
                    reached = pages[at] = [0] * (1 + len(WATCH_BOUNDS))
                for k in range(cls + 1):
                    reached[k] += sign
        duration = s.duration if s.duration is not None and s.duration > 0 else None
        device = s.device if s.device in _DEVICE_AT else "other"
        done = completion_of(s.furthest, duration, s.ended, s.distinct_seconds)
        for completion, where in (
            (self.completion, (s.video_id, bucket, cls, device)),
            (self.key_completion, (s.key, bucket, cls, device)),
        ):
            entry = completion.get(where)
            if entry is None:
                entry = completion[where] = [0.0] * (len(COMPLETION_COLUMNS) + 1)
            for i, value in enumerate(done):
                entry[i] += sign * value
        if engagement:
            self._add_engagement(s, bucket, duration, sign)

    def _add_engagement(self, s: State, bucket: float, duration: float | None, sign: int) -> None:
        islands = s.islands
        for ranges in ENGAGEMENT_RANGES:
            eng_key = (s.video_id, bucket, ranges, duration or UNKNOWN_DURATION)
            entry = self.engagement.get(eng_key)
            if entry is None:
                entry = self.engagement[eng_key] = [0] * (1 + ranges)
            entry[0] += sign
            if duration is None or not islands:
                continue
            step = duration / ranges
            if len(islands) == 2:  # one island: a contiguous run of ranges
                first = max(0, math.floor(islands[0] / step))
                last = min(ranges - 1, math.ceil(islands[1] / step) - 1)
                for index in range(first + 1, last + 2):
                    entry[index] += sign
            else:
                for index in covered_ranges(list(islands), duration, ranges):
                    entry[1 + index] += sign

    def _add_qoe(self, s: State, q: Qoe, bucket: float, sign: int) -> None:
        classes = (
            s.browser if s.browser in _BROWSER_AT else "other",
            s.platform if s.platform in _PLATFORM_AT else "other",
            s.device if s.device in _DEVICE_AT else "other",
        )
        latency = q.seek_latency_ms
        # histogram buckets, once: each goes into four rows (video and key, with and
        # without the device classes)
        startup = None if q.startup_ms is None else quantiles.index(q.startup_ms)
        seek = None if latency is None else quantiles.index(latency)
        values = (
            1,
            1 if q.startup_ms is not None else 0,
            s.watch_seconds,
            q.rebuffer_count,
            q.rebuffer_seconds,
            1 if q.failure is not None else 0,
            1 if q.failed_before_start else 0,
            1 if q.exited_before_start else 0,
            1 if latency is not None else 0,
            *scores.sums(q, s.watch_seconds, s.played),
        )
        for table, owner in ((self.qoe, s.video_id), (self.key_qoe, s.key)):
            entry = table.get((owner, bucket, *classes))
            if entry is None:
                entry = table[(owner, bucket, *classes)] = QoeSums()
            entry.add(values, startup, seek, sign)
        for metric, i in ((STARTUP, startup), (SEEK, seek)):
            if i is None:
                continue
            for hist, owner in ((self.qoe_hist, s.video_id), (self.key_qoe_hist, s.key)):
                hist[(owner, bucket, metric, i)] = hist.get((owner, bucket, metric, i), 0) + sign

    def change(self, old: State | None, new: State) -> None:
        if old == new:
            return
        if old is None:
            self.add(new, +1)
            return
        # the usual change: a session of the same video, bucket and duration watched more;
        # its engagement then changes only in the ranges it newly covers (no full -1/+1)
        same = (
            old.played
            and new.played
            and old.video_id == new.video_id
            and old.started_at == new.started_at
            and old.duration == new.duration
        )
        self.add(old, -1, engagement=not same)
        self.add(new, +1, engagement=not same)
        if same and old.islands != new.islands:
            self._engagement_change(old, new)

    def _engagement_change(self, old: State, new: State) -> None:
        duration = new.duration if new.duration is not None and new.duration > 0 else None
        if duration is None:
            return  # no timeline: only the session count, which did not change
        moment = new.started_at.timestamp()
        bucket = moment - moment % GRAIN_SECONDS
        for ranges in ENGAGEMENT_RANGES:
            before = covered_ranges(list(old.islands), duration, ranges)
            after = covered_ranges(list(new.islands), duration, ranges)
            if before == after:
                continue
            entry = self.engagement.get((new.video_id, bucket, ranges, duration))
            if entry is None:
                entry = self.engagement[(new.video_id, bucket, ranges, duration)] = [0] * (
                    1 + ranges
                )
            for index in after - before:
                entry[1 + index] += 1
            for index in before - after:
                entry[1 + index] -= 1


def completion_of(
    furthest: float, duration: float | None, ended: bool, distinct: float
) -> list[float]:
    """One view's contribution per COMPLETION_COLUMNS, then its fraction watched. The
    arithmetic is the raw completion query's, in float8."""
    if duration is None:
        return [1.0] + [0.0] * len(COMPLETION_COLUMNS)
    ratio = furthest / duration
    reached = [1.0 if ratio >= m / 100 else 0.0 for m in MILESTONES]
    finished = 1.0 if ended or furthest >= duration - 1 else 0.0
    return [1.0, 1.0, *reached, finished, min(1.0, distinct / duration)]


class QoeSums:
    """One QoE rollup row's change: QOE_COLUMNS, and the two histograms."""

    __slots__ = ("values", "startup", "seek")

    def __init__(self) -> None:
        self.values = [0.0] * len(QOE_COLUMNS)
        self.startup: dict[int, int] = {}
        self.seek: dict[int, int] = {}

    def add(
        self, values: tuple[float, ...], startup: int | None, seek: int | None, sign: int
    ) -> None:
        """Add a view's values and its histogram buckets (quantiles.index), each once."""
        for i, value in enumerate(values):
            self.values[i] += sign * value
        if startup is not None:
            self.startup[startup] = self.startup.get(startup, 0) + sign
        if seek is not None:
            self.seek[seek] = self.seek.get(seek, 0) + sign

    def __bool__(self) -> bool:
        return any(self.values) or any(self.startup.values()) or any(self.seek.values())

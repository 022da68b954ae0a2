"""Rollups: per video x 15-minute UTC bucket aggregates, kept exact in the same
transaction as the session rows they summarise, so "acknowledged" also means "counted".

A session counts in the bucket it started in, and its contribution changes while it
plays (watch time grows, its coverage widens). Every write therefore replaces the
session's old contribution with its new one: the writer reads the session's stored state,
subtracts what it contributed, adds what it contributes now, and upserts the sums.

- rollup_plays (video, bucket, watch class): sessions, watch seconds, and counts per
  browser / platform / device. The watch class is how many of WATCH_BOUNDS the session's
  watch time reaches, so `minimum_watch_seconds` = 0 or any bound is answered exactly;
  other thresholds use the raw path.
  `changes` counts the writes of sessions of the bucket (never decreases): a bucket
  whose sum of changes is as before holds the same sessions in the same state, which
  is what the engagement cache (engagement_cache) checks its entries against.
- rollup_sources (video, bucket, page): sessions reaching each watch class, cumulatively
  (`reached[k]`: sessions whose class is at least k), so one row answers any exact
  threshold. rollup_key_sources (key, hour, page): the same per ingest key, hourly.
- rollup_qoe (video, hour, browser, platform, device): QoE sums of the views with QoE
  data, with their startup / seek-latency histograms as arrays (for breakdowns);
  rollup_qoe_hist (video, hour, metric, histogram bucket): the same histograms without
  the device classes, one row per bucket (for totals).
- rollup_engagement (video, bucket, ranges, duration): sessions and, per range of the
  video's timeline cut into `ranges` equal parts, the sessions that watched any of it —
  computed with exactly the arithmetic of the raw engagement query, for the durations
  the sessions reported. A selection whose sessions all share one duration is answered
  from it; anything else uses the raw path.

Every IANA offset is a multiple of 15 minutes, so 15-minute UTC buckets re-bucket exactly
into any time zone for intervals that are whole multiples of 15 minutes (or months).
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from app import sketch
from app.model import BROWSERS, DEVICES, PLATFORMS

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
ROLLUP_TABLES = (
    "rollup_plays",
    "rollup_sources",
    "rollup_engagement",
    "rollup_key_plays",
    "rollup_key_sources",
    "rollup_impressions",
    "rollup_key_impressions",
    "rollup_completion",
    "rollup_key_completion",
    "rollup_qoe",
    "rollup_key_qoe",
    "rollup_qoe_hist",
    "rollup_key_qoe_hist",
)
STARTUP, SEEK = 0, 1  # the `metric` of rollup_qoe_hist rows
# Every rollup row also has a `shard`: the writing process's (the connection setting
# vidmetrics.shard, 0 when unset). Several processes adding to the same bucket then
# update rows of their own instead of queueing on one row's lock; every rollup query sums
# its rows anyway, so the shards add up to the same answer.
SHARDS = 8  # kept for the migration that introduced shards; see shards_of


def shard_pair() -> tuple[int, int]:
    """The two rollup shards a server process writes (its batches alternate between them,
    see app/ingest/writer.py), drawn at random when it starts: processes — containers too,
    which all have the same pid — then share a pair once in 16,000 (shard is a smallint)."""
    base = 2 * secrets.randbelow(16_000)
    return base, base + 1


SHARD_DEFAULT = "coalesce(nullif(current_setting('vidmetrics.shard', true), '')::smallint, 0)"
# completion per (owner, bucket, watch class, device): views, views whose duration is known,
# views that reached 25/50/75/95/100 % of it, finishes; plus the sum of % watched
MILESTONES = (25, 50, 75, 95, 100)
COMPLETION_COLUMNS = ["views", "known", *[f"reached_{m}" for m in MILESTONES], "finishes"]
# QoE per (owner, bucket, browser, platform, device), views with QoE data only: views,
# views with a startup time, their watch seconds, rebuffer events and seconds, failed views,
# views failed before the first frame, exits before start, views with seeks; plus the
# startup-time histogram and the histogram of each view's mean seek latency (app/sketch.py)
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
]
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
        return WATCH_BOUNDS.index(threshold) + 1  # type: ignore[arg-type]
    return None


def grain(moment: dt.datetime, width: int = GRAIN_SECONDS) -> dt.datetime:
    """The UTC bucket (15 minutes, or `width` seconds) a moment falls in."""
    seconds = math.floor(moment.timestamp() / width) * width
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def grain_sql(width: int = GRAIN_SECONDS, column: str = "s.started_at") -> str:
    """grain() in SQL: the UTC bucket of `width` seconds a timestamptz column falls in."""
    return f"to_timestamp(floor(extract(epoch FROM {column}) / {width}) * {width})"


def _at(epoch: float) -> dt.datetime:
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
    pairs = [(islands[i], islands[i + 1]) for i in range(0, len(islands or []), 2)]
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


class Deltas:
    """Changes to the rollups, summed per key, for one batch."""

    def __init__(self) -> None:
        # keys: (video id, bucket start in epoch seconds, ...)
        self.plays: dict[tuple[int, float, int], list[float]] = {}
        self.sources: dict[tuple[int, float, str], list[int]] = {}
        self.engagement: dict[tuple[int, float, int, float], list[int]] = {}
        # the same per ingest key: (key, bucket, ...)
        self.key_plays: dict[tuple[str, float, int], list[float]] = {}
        self.key_sources: dict[tuple[str, float, str], list[int]] = {}
        self.impressions: dict[tuple[int, float], int] = {}
        self.key_impressions: dict[tuple[str, float], int] = {}
        self.completion: dict[tuple[int, float, int, str], list[float]] = {}
        self.key_completion: dict[tuple[str, float, int, str], list[float]] = {}
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
            plays = table.get(key)  # type: ignore[attr-defined]
            if plays is None:
                plays = table[key] = [0.0] * (3 + len(BREAKDOWN_COLUMNS))  # type: ignore[index]
            plays[0] += sign
            plays[1] += sign * s.watch_seconds
            for column in columns:
                plays[column] += sign
            if sign > 0:  # one more write of a session in this bucket (see CHANGES)
                plays[-1] += 1
        if s.page is not None:
            hour = moment - moment % KEY_SOURCES_GRAIN_SECONDS
            for table, key in (
                (self.sources, (s.video_id, bucket, s.page)),  # type: ignore
                (self.key_sources, (s.key, hour, s.page)),
            ):
                reached = table.get(key)  # type: ignore[attr-defined]
                if reached is None:
                    reached = table[key] = [0] * (1 + len(WATCH_BOUNDS))  # type: ignore[index]
                for k in range(cls + 1):
                    reached[k] += sign
        duration = s.duration if s.duration is not None and s.duration > 0 else None
        device = s.device if s.device in _DEVICE_AT else "other"
        done = completion_of(s.furthest, duration, s.ended, s.distinct_seconds)
        for table, key in (
            (self.completion, (s.video_id, bucket, cls, device)),
            (self.key_completion, (s.key, bucket, cls, device)),
        ):
            entry = table.get(key)  # type: ignore[attr-defined]
            if entry is None:
                entry = table[key] = [0.0] * (len(COMPLETION_COLUMNS) + 1)  # type: ignore
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
        startup = None if q.startup_ms is None else sketch.index(q.startup_ms)
        seek = None if latency is None else sketch.index(latency)
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

    async def write(self, conn: asyncpg.Connection) -> None:
        """Add the non-zero deltas to the rollup tables (one statement)."""
        statement = Statement()
        self.add_to(statement)
        await statement.execute(conn)

    def add_to(self, statement: Statement, shard: int | None = None) -> None:
        """Add the non-zero deltas' upserts to a statement (see Statement), into rows of
        `shard` (None: the connection's, see SHARDS)."""
        for table, owner, deltas in (
            ("rollup_plays", VIDEO, self.plays),
            ("rollup_key_plays", KEY, self.key_plays),
        ):
            _upsert(
                statement,
                shard,
                table,
                [owner, BUCKET, ("class", "smallint")],
                [
                    ("sessions", "int"),
                    ("watch_seconds", "float8"),
                    *[(c, "int") for c in BREAKDOWN_COLUMNS],
                    ("changes", "int8"),
                ],
                [
                    (k[0], _at(k[1]), k[2], int(v[0]), v[1], *[int(x) for x in v[2:]])
                    for k, v in deltas.items()
                    if any(v)
                ],
            )
        for table, owner, reached in (
            ("rollup_sources", VIDEO, self.sources),
            ("rollup_key_sources", KEY, self.key_sources),
        ):
            _upsert(
                statement,
                shard,
                table,
                [owner, BUCKET, ("page", "text")],
                [(c, "int") for c in REACHED_COLUMNS],
                [(k[0], _at(k[1]), k[2], *v) for k, v in reached.items() if any(v)],
            )
        for table, owner, loads in (
            ("rollup_impressions", VIDEO, self.impressions),
            ("rollup_key_impressions", KEY, self.key_impressions),
        ):
            _upsert(
                statement,
                shard,
                table,
                [owner, BUCKET],
                [("impressions", "int")],
                [(k[0], _at(k[1]), v) for k, v in loads.items() if v],
            )
        for table, owner, done in (
            ("rollup_completion", VIDEO, self.completion),
            ("rollup_key_completion", KEY, self.key_completion),
        ):
            _upsert(
                statement,
                shard,
                table,
                [owner, BUCKET, ("class", "smallint"), ("device", "text")],
                [*[(c, "int") for c in COMPLETION_COLUMNS], ("percent_sum", "float8")],
                [
                    (*k[:1], _at(k[1]), *k[2:], *[int(round(x)) for x in v[:-1]], v[-1])
                    for k, v in done.items()
                    if any(v)
                ],
            )
        for table, owner, qoe in (
            ("rollup_qoe", VIDEO, self.qoe),
            ("rollup_key_qoe", KEY, self.key_qoe),
        ):
            _upsert(
                statement,
                shard,
                table,
                [owner, BUCKET, ("browser", "text"), ("platform", "text"), ("device", "text")],
                [(c, "float8" if c.endswith("seconds") else "int") for c in QOE_COLUMNS],
                [
                    (
                        k[0],
                        _at(k[1]),
                        *k[2:],
                        *[
                            x if c.endswith("seconds") else int(round(x))
                            for c, x in zip(QOE_COLUMNS, v.values, strict=True)
                        ],
                        hist_literal(v.startup),
                        hist_literal(v.seek),
                    )
                    for k, v in qoe.items()
                    if v
                ],
                merged=[(h, HIST_MERGE) for h in ("startup_hist", "seek_hist")],
            )
        for table, owner, hist in (
            ("rollup_qoe_hist", VIDEO, self.qoe_hist),
            ("rollup_key_qoe_hist", KEY, self.key_qoe_hist),
        ):
            _upsert(
                statement,
                shard,
                table,
                [owner, BUCKET, ("metric", "smallint"), ("idx", "smallint")],
                [("views", "int")],
                [(k[0], _at(k[1]), k[2], k[3], v) for k, v in hist.items() if v],
            )
        _upsert(
            statement,
            shard,
            "rollup_engagement",
            [VIDEO, BUCKET, ("ranges", "smallint"), ("duration", "float8")],
            [("sessions", "int")],
            [
                (k[0], _at(k[1]), k[2], k[3], v[0], "{" + ",".join(map(str, v[1:])) + "}")
                for k, v in self.engagement.items()
                if any(v)
            ],
            merged=[("counts", COUNTS_MERGE)],
        )


# how an upsert combines a stored array with the one added ({old}, {new}): histograms
# (subscripts are histogram buckets), and engagement counts (same length, elementwise)
HIST_MERGE = "vidmetrics_hist_add({old}, {new})"
COUNTS_MERGE = (
    "(SELECT array_agg(x + y ORDER BY i) FROM unnest({old}, {new}) WITH ORDINALITY AS z(x, y, i))"
)
# every rollup table: its key columns before the shard, the columns an upsert adds, and
# the arrays it merges
KEYS = {
    "rollup_plays": ["video_id", "bucket", "class"],
    "rollup_sources": ["video_id", "bucket", "page"],
    "rollup_engagement": ["video_id", "ranges", "bucket", "duration"],
    "rollup_impressions": ["video_id", "bucket"],
    "rollup_completion": ["video_id", "bucket", "class", "device"],
    "rollup_qoe": ["video_id", "bucket", "browser", "platform", "device"],
    "rollup_qoe_hist": ["video_id", "bucket", "metric", "idx"],
}
KEYS.update(
    {
        t.replace("rollup_", "rollup_key_"): ["key", *k[1:]]
        for t, k in list(KEYS.items())
        if t != "rollup_engagement"
    }
)
SUMS = {
    "plays": ["sessions", "watch_seconds", *BREAKDOWN_COLUMNS, "changes"],
    "sources": REACHED_COLUMNS,
    "engagement": ["sessions"],
    "impressions": ["impressions"],
    "completion": [*COMPLETION_COLUMNS, "percent_sum"],
    "qoe": QOE_COLUMNS,
    "qoe_hist": ["views"],
}
MERGED = {
    "engagement": [("counts", COUNTS_MERGE)],
    "qoe": [("startup_hist", HIST_MERGE), ("seek_hist", HIST_MERGE)],
}

Column = tuple[str, str]  # a column's name and the PostgreSQL type of its values
VIDEO: Column = ("video_id", "bigint")
KEY: Column = ("key", "text")
BUCKET: Column = ("bucket", "timestamptz")


class Statement:
    """Several data-modifying statements sent as one (`WITH w0 AS (INSERT ...), w1 AS
    (...) SELECT ...`): one round trip for a batch's writes instead of one each. Parts
    must not depend on each other's effects (they all see the same snapshot); rows go in
    key order within each, and no two transactions of one process write at once, while
    processes write rollup rows of their own shard: no lock cycle."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def param(self, value: Any, pgtype: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{pgtype}"

    def add(self, sql: str) -> str:
        """Add a part; returns its name, for the final SELECT to read its RETURNING."""
        self.parts.append(sql)
        return f"w{len(self.parts) - 1}"

    def sql(self, final: str) -> str:
        ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(self.parts))
        return f"WITH {ctes} {final}" if ctes else final

    async def execute(self, conn: asyncpg.Connection) -> None:
        if self.parts:
            await conn.execute(self.sql("SELECT 1"), *self.args)


def _upsert(
    statement: Statement,
    shard: int | None,
    table: str,
    keys: list[Column],
    sums: list[Column],
    rows: list[tuple[Any, ...]],
    merged: list[tuple[str, str]] | None = None,
) -> None:
    """Add `rows` (the key columns' values, then the sums', then each merged array as an
    int[] literal) to a rollup table: a new key is inserted, an existing one gets the sums
    added and each merged array combined by its SQL expression over {old} and {new}. Rows
    go in key order, so concurrent writers never deadlock; the row's shard is `shard`, or
    the column default (this process's, see SHARDS)."""
    if not rows:
        return
    rows.sort(key=lambda row: row[: len(keys)])
    merged = merged or []
    columns = [*keys, *sums, *((name, "text") for name, _ in merged)]
    aliases = [f"c{i}" for i in range(len(columns))]
    plain = len(keys) + len(sums)
    selected = [*aliases[:plain], *(f"{a}::int[]" for a in aliases[plain:])]
    updates = [f"{c} = r.{c} + EXCLUDED.{c}" for c, _ in sums] + [
        f"{c} = " + expression.format(old=f"r.{c}", new=f"EXCLUDED.{c}") for c, expression in merged
    ]
    arrays = [
        statement.param(list(values), f"{t}[]")
        for values, (_, t) in zip(zip(*rows, strict=True), columns, strict=True)
    ]
    names = [c for c, _ in columns]
    if shard is not None:
        names.append("shard")
        selected.append(statement.param(shard, "smallint"))
    statement.add(
        f"""
        INSERT INTO {table} AS r ({", ".join(names)})
        SELECT {", ".join(selected)}
          FROM unnest({", ".join(arrays)}) AS u({", ".join(aliases)})
        ON CONFLICT ({", ".join(c for c, _ in keys)}, shard) DO UPDATE SET
            {", ".join(updates)}
        """
    )


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
        """Add a view's values and its histogram buckets (sketch.index), each once."""
        for i, value in enumerate(values):
            self.values[i] += sign * value
        if startup is not None:
            self.startup[startup] = self.startup.get(startup, 0) + sign
        if seek is not None:
            self.seek[seek] = self.seek.get(seek, 0) + sign

    def __bool__(self) -> bool:
        return any(self.values) or any(self.startup.values()) or any(self.seek.values())


def hist_literal(counts: dict[int, int]) -> str | None:
    """A histogram as a PostgreSQL int[] literal whose subscripts are its buckets,
    e.g. '[41:43]={2,0,-1}'; None when it changes nothing."""
    used = [i for i, c in counts.items() if c]
    if not used:
        return None
    low, high = min(used), max(used)
    return (
        f"[{low}:{high}]={{" + ",".join(str(counts.get(i, 0)) for i in range(low, high + 1)) + "}"
    )


# seconds of distinct media a stored session watched: its islands' total length, summed
# in the order State.distinct_seconds sums them (so float8 gives the same figure)
DISTINCT_SECONDS = (
    "(SELECT coalesce(sum(s.islands[2 * k] - s.islands[2 * k - 1]), 0) "
    "FROM generate_series(1, coalesce(cardinality(s.islands), 0) / 2) AS k)"
)

# the sessions columns a State is built from (after s.* aliases); see state_of
STATE_COLUMNS = """s.id, s.started_at, s.video_id, v.key, s.browser, s.platform, s.device,
    s.page, s.watch_seconds, s.duration, s.islands, s.furthest, s.ended, s.played, s.qoe,
    s.startup_ms, s.rebuffer_count, s.rebuffer_seconds, s.seek_count, s.seek_ms, s.failure,
    s.failed_before_start, s.exited_before_start"""


def qoe_of(row: Any) -> Qoe | None:
    """The Qoe of a stored sessions row (None: the session has no QoE data)."""
    if not row["qoe"]:
        return None
    return Qoe(
        row["startup_ms"],
        row["rebuffer_count"] or 0,
        row["rebuffer_seconds"] or 0.0,
        row["seek_count"] or 0,
        row["seek_ms"] or 0.0,
        row["failure"],
        bool(row["failed_before_start"]),
        bool(row["exited_before_start"]),
    )


def state_of(row: Any) -> State:
    """A State from a stored sessions row (STATE_COLUMNS)."""
    return State(
        row["key"],
        row["video_id"],
        row["started_at"],
        row["browser"],
        row["platform"],
        row["device"],
        row["page"],
        row["watch_seconds"],
        row["duration"],
        tuple(row["islands"] or ()),
        row["furthest"],
        row["ended"],
        row["played"],
        qoe_of(row),
    )

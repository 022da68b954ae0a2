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

What a session contributes and how a batch's changes add up is pure arithmetic, in
app/model/rollup.py; this module is the SQL that stores and reads it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from app.model.rollup import (
    BREAKDOWN_COLUMNS,
    COMPLETION_COLUMNS,
    GRAIN_SECONDS,
    QOE_COLUMNS,
    REACHED_COLUMNS,
    Deltas,
    Qoe,
    QoeSums,
    State,
    at_epoch,
    qoe_float,
)
from app.storage.driver import Connection

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


def grain_sql(width: int = GRAIN_SECONDS, column: str = "s.started_at") -> str:
    """grain() in SQL: the UTC bucket of `width` seconds a timestamptz column falls in."""
    return f"to_timestamp(floor(extract(epoch FROM {column}) / {width}) * {width})"


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

    async def execute(self, conn: Connection) -> None:
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
    s.failed_before_start, s.exited_before_start, s.quick_exit, s.upscale_max, s.upscale_sum,
    s.upscale_seconds"""


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
        bool(row["quick_exit"]),
        row["upscale_max"],
        row["upscale_sum"] or 0.0,
        row["upscale_seconds"] or 0.0,
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


async def write_deltas(conn: Connection, deltas: Deltas) -> None:
    """Add the non-zero deltas to the rollup tables (one statement)."""
    statement = Statement()
    add_deltas(statement, deltas)
    await statement.execute(conn)


Rows = list[tuple[Any, ...]]


def _plays(deltas: dict[Any, list[float]]) -> Rows:
    return [
        (k[0], at_epoch(k[1]), k[2], int(v[0]), v[1], *[int(x) for x in v[2:]])
        for k, v in deltas.items()
        if any(v)
    ]


def _sources(deltas: dict[Any, list[int]]) -> Rows:
    return [(k[0], at_epoch(k[1]), k[2], *v) for k, v in deltas.items() if any(v)]


def _impressions(deltas: dict[Any, int]) -> Rows:
    return [(k[0], at_epoch(k[1]), v) for k, v in deltas.items() if v]


def _completion(deltas: dict[Any, list[float]]) -> Rows:
    return [
        (*k[:1], at_epoch(k[1]), *k[2:], *[int(round(x)) for x in v[:-1]], v[-1])
        for k, v in deltas.items()
        if any(v)
    ]


def _qoe(deltas: dict[Any, QoeSums]) -> Rows:
    return [
        (
            k[0],
            at_epoch(k[1]),
            *k[2:],
            *[
                x if qoe_float(c) else int(round(x))
                for c, x in zip(QOE_COLUMNS, v.values, strict=True)
            ],
            hist_literal(v.startup),
            hist_literal(v.seek),
        )
        for k, v in deltas.items()
        if v
    ]


def _qoe_hist(deltas: dict[Any, int]) -> Rows:
    return [(k[0], at_epoch(k[1]), k[2], k[3], v) for k, v in deltas.items() if v]


# the rollups kept per video and per key, in the order a batch writes them: (kind — the
# Deltas attributes `kind` and `key_kind`, the tables rollup_kind and rollup_key_kind —, key
# columns after the owner and the bucket, the summed columns, rows from the deltas, the
# arrays merged)
_FAMILIES: list[tuple[str, list[Column], list[Column], Callable[[Any], Rows], list[Any]]] = [
    (
        "plays",
        [("class", "smallint")],
        [
            ("sessions", "int"),
            ("watch_seconds", "float8"),
            *[(c, "int") for c in BREAKDOWN_COLUMNS],
            ("changes", "int8"),
        ],
        _plays,
        [],
    ),
    ("sources", [("page", "text")], [(c, "int") for c in REACHED_COLUMNS], _sources, []),
    ("impressions", [], [("impressions", "int")], _impressions, []),
    (
        "completion",
        [("class", "smallint"), ("device", "text")],
        [*[(c, "int") for c in COMPLETION_COLUMNS], ("percent_sum", "float8")],
        _completion,
        [],
    ),
    (
        "qoe",
        [("browser", "text"), ("platform", "text"), ("device", "text")],
        [(c, "float8" if qoe_float(c) else "int") for c in QOE_COLUMNS],
        _qoe,
        [(h, HIST_MERGE) for h in ("startup_hist", "seek_hist")],
    ),
    ("qoe_hist", [("metric", "smallint"), ("idx", "smallint")], [("views", "int")], _qoe_hist, []),
]


def add_deltas(statement: Statement, d: Deltas, shard: int | None = None) -> None:
    """Add the non-zero deltas' upserts to a statement (see Statement), into rows of
    `shard` (None: the connection's, see SHARDS)."""
    for kind, keys, sums, rows, merged in _FAMILIES:
        for table, owner, deltas in (
            (f"rollup_{kind}", VIDEO, getattr(d, kind)),
            (f"rollup_key_{kind}", KEY, getattr(d, f"key_{kind}")),
        ):
            _upsert(statement, shard, table, [owner, BUCKET, *keys], sums, rows(deltas), merged)
    _upsert(
        statement,
        shard,
        "rollup_engagement",
        [VIDEO, BUCKET, ("ranges", "smallint"), ("duration", "float8")],
        [("sessions", "int")],
        [
            (k[0], at_epoch(k[1]), k[2], k[3], v[0], "{" + ",".join(map(str, v[1:])) + "}")
            for k, v in d.engagement.items()
            if any(v)
        ],
        merged=[("counts", COUNTS_MERGE)],
    )

"""The schema as SQLAlchemy MetaData: what the migrations build, and what a test checks
them against.

Time-series tables (sessions, impressions) carry their partitioning time column in every
unique key so that TimescaleDB can turn them into hypertables. A session's watched ranges
(`islands`) and raw events (`events`) live in its own row: no table of intervals or events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Sequence,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from app.model.rollup import (
    BREAKDOWN_COLUMNS,
    COMPLETION_COLUMNS,
    QOE_COLUMNS,
    REACHED_COLUMNS,
    qoe_float,
)
from app.storage.rollups import SHARD_DEFAULT


def _shard() -> Column[Any]:
    """The writing process's rollup shard (see rollups.SHARDS)."""
    return Column("shard", SmallInteger, nullable=False, server_default=text(SHARD_DEFAULT))


metadata = MetaData()

# Session ids are handed out in blocks of SESSION_ID_BLOCK per nextval(), so a server
# process asks the database for ids once per thousand sessions, never per session.
SESSION_ID_BLOCK = 1000
session_ids = Sequence("session_ids", increment=SESSION_ID_BLOCK, start=1, metadata=metadata)

ingest_keys = Table(
    "ingest_keys",
    metadata,
    Column("key", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("disabled_at", DateTime(timezone=True), nullable=True),
)

videos = Table(
    "videos",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("key", Text, ForeignKey("ingest_keys.key"), nullable=False),
    # sha256 over the canonical JSON of (identifier, metadata): the video's identity
    Column("identity", Text, nullable=False),
    Column("identifier", Text, nullable=True),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    UniqueConstraint("key", "identity", name="videos_key_identity_key"),
    Index(
        "videos_metadata_idx",
        "metadata",
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    ),
    Index("videos_identifier_idx", "identifier"),
)


def _session_ref() -> list[Column[Any]]:
    """A reference to one session: its id and start (together its primary key)."""
    return [
        Column("session_id", BigInteger, nullable=False),
        Column("session_started_at", DateTime(timezone=True), nullable=False),
    ]


def _view_columns() -> list[Column[Any]]:
    """What a session and a page load know of their view: the device classes, the page
    (scheme://host/path of the embedding page; never a query string or fragment) and the
    site's own session data. New Column objects each time (a column has one table)."""
    return [
        Column("browser", Text, nullable=False),
        Column("platform", Text, nullable=False),
        Column("device", Text, nullable=False),
        Column("page", Text, nullable=True),
        Column("session_data", JSONB, nullable=True),
    ]


# each issue of the session list as a predicate on a sessions row: the partial indexes'
# predicates, and the queries' conditions (written identically, so the planner matches
# them); slow_start at its default threshold, 4 s
ISSUE_PREDICATES = {
    "failed": "failure IS NOT NULL",
    "startup_failure": "failed_before_start",
    "exit_before_start": "exited_before_start",
    "stalled": "rebuffer_count >= 1",
    "slow_start": "startup_ms > 4000.0::float8",
    "low_quality": "upscale_max > 0.25::float8",
}

sessions = Table(
    "sessions",
    metadata,
    Column("id", BigInteger, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("video_id", BigInteger, nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    *_view_columns(),
    Column("duration", Float, nullable=True),
    Column("watch_seconds", Float, nullable=False, server_default=text("0")),
    Column("furthest", Float, nullable=False, server_default=text("0")),
    # merged watched media ranges, flattened [from1, to1, from2, to2, ...]
    Column("islands", ARRAY(Float), nullable=True),
    Column("ended", Boolean, nullable=False, server_default=text("false")),
    # false: playback was requested (or failed) but never started; not a play
    Column("played", Boolean, nullable=False, server_default=text("true")),
    # quality of experience, NULL for sessions whose client sends no QoE events
    Column("qoe", Boolean, nullable=True),
    Column("startup_ms", Float, nullable=True),
    Column("rebuffer_count", Integer, nullable=True),
    Column("rebuffer_seconds", Float, nullable=True),
    Column("seek_count", Integer, nullable=True),
    Column("seek_ms", Float, nullable=True),
    Column("failure", SmallInteger, nullable=True),  # MediaError code, 0 if unknown
    Column("failed_before_start", Boolean, nullable=True),
    Column("exited_before_start", Boolean, nullable=True),
    Column("quick_exit", Boolean, nullable=True),  # that exit came within 1 s
    # upscaling while playing (app/model/scores.py, video quality)
    Column("upscale_max", Float, nullable=True),
    Column("upscale_sum", Float, nullable=True),
    Column("upscale_seconds", Float, nullable=True),
    # the raw events, packed (app/storage/timeline.py); NULL once older than
    # METRICS_RAW_EVENTS_RETENTION_DAYS. event_count: events received, kept after that.
    Column("events", LargeBinary, nullable=True),
    Column("event_count", Integer, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("id", "started_at", name="sessions_pkey"),
    Index("sessions_video_started_idx", "video_id", "started_at"),
    # the session list's `issue` filter (migrations 0012, 0013): one partial index per issue
    *[
        Index(f"sessions_issue_{name}_idx", "video_id", "started_at", postgresql_where=text(p))
        for name, p in ISSUE_PREDICATES.items()
    ],
    # retention scans by time only; rows arrive in time order (migration 0008)
    Index("sessions_started_brin", "started_at", postgresql_using="brin"),
)

# Sessions playing right now, refreshed by every server process; rows older than the
# presence TTL are ignored (their process died). Unlogged: presence needs no durability.
playing = Table(
    "playing",
    metadata,
    Column("session_id", BigInteger, primary_key=True),
    Column("video_id", BigInteger, nullable=False),
    Column("session_started_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Index("playing_video_idx", "video_id"),
    prefixes=["UNLOGGED"],
)

# Ended sessions still to be posted to the export webhook (METRICS_EXPORT_WEBHOOK); a row
# is written with the session's final rows and deleted once the receiver accepted it.
export_outbox = Table(
    "export_outbox",
    metadata,
    *_session_ref(),
    Column("enqueued_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column(
        "next_attempt_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
    ),
    Column("last_error", Text, nullable=True),
    PrimaryKeyConstraint("session_id", name="export_outbox_pkey"),
    Index("export_outbox_due_idx", "next_attempt_at"),
)


# Rollups kept exact at ingest (see app/storage/rollups.py), per video and per ingest key:
# the owner, the bucket, the family's own key columns, its sums, the writer's shard (and,
# for plays, the change count after it), keyed by all of them but the sums.
def _rollup(
    name: str,
    owner: Column[Any],
    keys: list[Column[Any]],
    sums: list[Column[Any]],
    after: list[Column[Any]] | None = None,
) -> Table:
    return Table(
        name,
        metadata,
        owner,
        Column("bucket", DateTime(timezone=True), nullable=False),
        *keys,
        *sums,
        _shard(),
        *(after or []),
        PrimaryKeyConstraint(
            owner.name, "bucket", *(k.name for k in keys), "shard", name=f"{name}_pkey"
        ),
    )


def _counts(names: list[str], kind: Callable[[str], Any] = lambda _: Integer) -> list[Column[Any]]:
    return [Column(c, kind(c), nullable=False, server_default=text("0")) for c in names]


def _per_owner(kind: str, *parts: Callable[[], list[Column[Any]]]) -> tuple[Table, Table]:
    """rollup_<kind> per video and rollup_key_<kind> per ingest key (fresh columns each)."""
    return (
        _rollup(
            f"rollup_{kind}",
            Column("video_id", BigInteger, nullable=False),
            *[make() for make in parts],
        ),
        _rollup(
            f"rollup_key_{kind}", Column("key", Text, nullable=False), *[make() for make in parts]
        ),
    )


def _text(*names: str) -> list[Column[Any]]:
    return [Column(n, Text, nullable=False) for n in names]


def _small(*names: str) -> list[Column[Any]]:
    return [Column(n, SmallInteger, nullable=False) for n in names]


rollup_plays, rollup_key_plays = _per_owner(
    "plays",
    lambda: _small("class"),
    lambda: [
        Column("sessions", Integer, nullable=False),
        Column("watch_seconds", Float, nullable=False),
        *_counts(BREAKDOWN_COLUMNS),
    ],
    # writes of this bucket's sessions, ever (see rollups.py): the engagement cache's version
    lambda: [Column("changes", BigInteger, nullable=False, server_default=text("0"))],
)
rollup_sources, rollup_key_sources = _per_owner(
    "sources", lambda: _text("page"), lambda: _counts(REACHED_COLUMNS)
)

rollup_engagement = Table(
    "rollup_engagement",
    metadata,
    Column("video_id", BigInteger, nullable=False),
    Column("bucket", DateTime(timezone=True), nullable=False),
    Column("ranges", SmallInteger, nullable=False),
    Column("duration", Float, nullable=False),
    Column("sessions", Integer, nullable=False),
    Column("counts", ARRAY(Integer), nullable=False),
    _shard(),
    PrimaryKeyConstraint(
        "video_id", "ranges", "bucket", "duration", "shard", name="rollup_engagement_pkey"
    ),
)

# one row per one-off data job (the rollup backfill); done_at NULL: still to do
rollup_state = Table(
    "rollup_state",
    metadata,
    Column("name", Text, primary_key=True),
    Column("done_at", DateTime(timezone=True), nullable=True),
)

# Every join of a video (an impression), whether or not it played; as anonymous as a session.
impressions = Table(
    "impressions",
    metadata,
    Column("video_id", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    *_view_columns(),
    Index("impressions_video_at_idx", "video_id", "at"),
    Index("impressions_at_brin", "at", postgresql_using="brin"),
)


rollup_impressions, rollup_key_impressions = _per_owner(
    "impressions", list, lambda: [Column("impressions", Integer, nullable=False)]
)
rollup_completion, rollup_key_completion = _per_owner(
    "completion",
    lambda: [*_small("class"), *_text("device")],
    lambda: [
        *_counts(COMPLETION_COLUMNS),
        Column("percent_sum", Float, nullable=False, server_default=text("0")),
    ],
)
rollup_qoe, rollup_key_qoe = _per_owner(
    "qoe",
    lambda: _text("browser", "platform", "device"),
    lambda: [
        *_counts(QOE_COLUMNS, lambda c: Float if qoe_float(c) else Integer),
        # histograms (app/model/quantiles.py): subscript = histogram bucket, value = views
        Column("startup_hist", ARRAY(Integer), nullable=True),
        Column("seek_hist", ARRAY(Integer), nullable=True),
    ],
)
# histogram rows without device classes: metric 0 startup, 1 seek latency
rollup_qoe_hist, rollup_key_qoe_hist = _per_owner(
    "qoe_hist",
    lambda: _small("metric", "idx"),
    lambda: [Column("views", Integer, nullable=False)],
)

# Engagement of all videos of a key per 15-minute bucket, for one (ranges, length): what
# the raw path computed, kept while the bucket's change count (sum of rollup_key_plays.
# changes) is still `version`. Unlogged: a cache, recomputed after a crash.
engagement_cache = Table(
    "engagement_cache",
    metadata,
    Column("key", Text, nullable=False),
    Column("ranges", SmallInteger, nullable=False),
    Column("length", Float, nullable=False),
    Column("bucket", DateTime(timezone=True), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("counts", ARRAY(Integer), nullable=False),
    # the bucket's distinct reported durations (UNKNOWN_DURATION: none), which decide length
    Column("durations", ARRAY(Float), nullable=False),
    PrimaryKeyConstraint("key", "ranges", "length", "bucket", name="engagement_cache_pkey"),
    prefixes=["UNLOGGED"],
)

# The rest of a long session's raw events (app/storage/timeline.py: ROW_BYTES), one row per
# write, in order of `seq`; dropped with the row's raw events.
session_events = Table(
    "session_events",
    metadata,
    *_session_ref(),
    Column("seq", BigInteger, Identity(always=False), nullable=False),
    Column("events", LargeBinary, nullable=False),
    Index("session_events_session_idx", "session_id", "seq"),
)

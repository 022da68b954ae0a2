"""Compact storage: a session's raw events move into its own row (`sessions.events`, packed
by app/storage/timeline.py, with `event_count`), and its watched ranges are only its
`islands`: the `events` and `watch_intervals` tables go. Every answer is unchanged (the
engagement raw path and exports read the islands, which are the merged intervals).

Upgrading converts what exists, in batches: islands for sessions that have none yet (an
install from before 0003 whose backfill has not run), then each session's events, packed
in time order; events of sessions already deleted by retention are dropped with the table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from app.model.rollup import merge_islands
from app.storage import timeline

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
BATCH = 5000


def _fill_islands(bind: sa.Connection) -> None:
    last = -1
    while True:
        rows = bind.execute(
            sa.text(
                """
            SELECT s.id, s.started_at,
                   ARRAY(SELECT ARRAY[i.media_from, i.media_to] FROM watch_intervals i
                          WHERE i.session_id = s.id AND i.session_started_at = s.started_at)
              FROM sessions s
             WHERE s.islands IS NULL AND s.id > :last
             ORDER BY s.id LIMIT :batch
            """
            ),
            {"last": last, "batch": BATCH},
        ).all()
        if not rows:
            return
        islands, distinct = [], []
        for _, _, spans in rows:
            merged = merge_islands(None, [(a, b) for a, b in spans or []])
            islands.append("{" + ",".join(map(repr, merged)) + "}")
            distinct.append(sum(merged[i + 1] - merged[i] for i in range(0, len(merged), 2)))
        bind.execute(
            sa.text(
                """
            UPDATE sessions s SET islands = u.i::float8[], distinct_seconds = u.d
              FROM unnest(CAST(:ids AS bigint[]), CAST(:ts AS timestamptz[]),
                          CAST(:islands AS text[]), CAST(:distinct AS float8[])) AS u(id, t, i, d)
             WHERE s.id = u.id AND s.started_at = u.t
            """
            ),
            {
                "ids": [r[0] for r in rows],
                "ts": [r[1] for r in rows],
                "islands": islands,
                "distinct": distinct,
            },
        )
        last = rows[-1][0]


def _pack_events(bind: sa.Connection) -> None:
    last = -1
    while True:
        ids = (
            bind.execute(
                sa.text(
                    "SELECT DISTINCT session_id FROM (SELECT session_id FROM events "
                    "WHERE session_id > :last ORDER BY session_id LIMIT :batch) e ORDER BY 1"
                ),
                {"last": last, "batch": BATCH * 4},
            )
            .scalars()
            .all()
        )
        if not ids:
            return
        rows = bind.execute(
            sa.text(
                """
            SELECT s.id, s.started_at, array_agg(e.at ORDER BY e.at),
                   array_agg(e.name ORDER BY e.at), array_agg(e.payload::text ORDER BY e.at)
              FROM events e JOIN sessions s ON s.id = e.session_id
             WHERE e.session_id = ANY(CAST(:ids AS bigint[]))
             GROUP BY s.id, s.started_at
            """
            ),
            {"ids": list(ids)},
        ).all()
        packed = [
            timeline.encode(
                (
                    (at, name, orjson.loads(payload) if payload else None)
                    for at, name, payload in zip(ats, names, payloads, strict=True)
                ),
                started,
            )
            for _, started, ats, names, payloads in rows
        ]
        if rows:
            bind.execute(
                sa.text(
                    """
                UPDATE sessions s SET events = u.ev, event_count = u.n
                  FROM unnest(CAST(:ids AS bigint[]), CAST(:ts AS timestamptz[]),
                              CAST(:evs AS bytea[]), CAST(:ns AS int[])) AS u(id, t, ev, n)
                 WHERE s.id = u.id AND s.started_at = u.t
                """
                ),
                {
                    "ids": [r[0] for r in rows],
                    "ts": [r[1] for r in rows],
                    "evs": packed,
                    "ns": [len(r[2]) for r in rows],
                },
            )
        last = ids[-1]


def upgrade() -> None:
    op.add_column("sessions", sa.Column("events", sa.LargeBinary, nullable=True))
    op.add_column(
        "sessions",
        sa.Column("event_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    bind = op.get_bind()
    _fill_islands(bind)
    _pack_events(bind)
    op.drop_table("watch_intervals")
    op.drop_table("events")


def downgrade() -> None:
    op.create_table(
        "watch_intervals",
        sa.Column("session_id", sa.BigInteger, nullable=False),
        sa.Column("video_id", sa.BigInteger, nullable=False),
        sa.Column("session_started_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("media_from", sa.Float, nullable=False),
        sa.Column("media_to", sa.Float, nullable=False),
        sa.Column("elapsed", sa.Float, nullable=False),
    )
    op.create_index(
        "watch_intervals_video_idx", "watch_intervals", ["video_id", "session_started_at"]
    )
    op.create_index("watch_intervals_session_idx", "watch_intervals", ["session_id"])
    op.create_table(
        "events",
        sa.Column("session_id", sa.BigInteger, nullable=False),
        sa.Column("video_id", sa.BigInteger, nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=True),
    )
    op.create_index("events_session_idx", "events", ["session_id", "at"])
    bind = op.get_bind()
    # one interval per island (the merged ranges are all that was kept)
    bind.execute(
        sa.text(
            """
        INSERT INTO watch_intervals
        SELECT s.id, s.video_id, s.started_at, s.started_at, s.islands[2 * k - 1],
               s.islands[2 * k], s.islands[2 * k] - s.islands[2 * k - 1]
          FROM sessions s, generate_series(1, coalesce(cardinality(s.islands), 0) / 2) AS k
        """
        )
    )
    last = -1
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT id, started_at, video_id, events FROM sessions "
                "WHERE events IS NOT NULL AND id > :last ORDER BY id LIMIT :batch"
            ),
            {"last": last, "batch": BATCH},
        ).all()
        if not rows:
            break
        out = [
            (sid, video, at, name, orjson.dumps(payload).decode() if payload else None)
            for sid, started, video, blob in rows
            for at, name, payload in timeline.decode(blob, started)
        ]
        if out:
            bind.execute(
                sa.text(
                    """
                INSERT INTO events
                SELECT * FROM unnest(CAST(:s AS bigint[]), CAST(:v AS bigint[]),
                                     CAST(:at AS timestamptz[]), CAST(:n AS text[]),
                                     CAST(:p AS jsonb[]))
                """
                ),
                {
                    "s": [o[0] for o in out],
                    "v": [o[1] for o in out],
                    "at": [o[2] for o in out],
                    "n": [o[3] for o in out],
                    "p": [o[4] for o in out],
                },
            )
        last = rows[-1][0]
    op.drop_column("sessions", "event_count")
    op.drop_column("sessions", "events")

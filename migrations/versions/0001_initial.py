"""Initial schema: keys, videos, sessions, watch intervals, raw events, presence.

On TimescaleDB (detected, never configured) the time-series tables become hypertables
with compression settings and a continuous aggregate (timescale/*.sql); on plain
PostgreSQL they stay ordinary tables with the same indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from app.storage import timescale

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.execute("CREATE SEQUENCE session_ids INCREMENT BY 1000 START WITH 1")
    op.create_table(
        "ingest_keys",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("disabled_at", TZ, nullable=True),
    )
    op.create_table(
        "videos",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("key", sa.Text, sa.ForeignKey("ingest_keys.key"), nullable=False),
        sa.Column("identity", sa.Text, nullable=False),
        sa.Column("identifier", sa.Text, nullable=True),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.UniqueConstraint("key", "identity", name="videos_key_identity_key"),
    )
    op.create_index(
        "videos_metadata_idx",
        "videos",
        ["metadata"],
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_index("videos_identifier_idx", "videos", ["identifier"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.BigInteger, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("video_id", sa.BigInteger, nullable=False),
        sa.Column("ended_at", TZ, nullable=True),
        sa.Column("browser", sa.Text, nullable=False),
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("page", sa.Text, nullable=True),
        sa.Column("session_data", JSONB, nullable=True),
        sa.Column("duration", sa.Float, nullable=True),
        sa.Column("watch_seconds", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("furthest", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("id", "started_at", name="sessions_pkey"),
    )
    op.create_index("sessions_video_started_idx", "sessions", ["video_id", "started_at"])
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
    op.create_table(
        "playing",
        sa.Column("session_id", sa.BigInteger, primary_key=True),
        sa.Column("video_id", sa.BigInteger, nullable=False),
        sa.Column("session_started_at", TZ, nullable=False),
        sa.Column("last_seen", TZ, nullable=False),
        prefixes=["UNLOGGED"],
    )
    op.create_index("playing_video_idx", "playing", ["video_id"])
    bind = op.get_bind()
    if timescale.available(bind):
        timescale.upgrade(bind)


def downgrade() -> None:
    bind = op.get_bind()
    timescale.downgrade(bind)
    for table in ("playing", "events", "watch_intervals", "sessions", "videos", "ingest_keys"):
        op.drop_table(table)
    op.execute("DROP SEQUENCE session_ids")

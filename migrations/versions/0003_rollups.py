"""Rollups maintained at ingest (plays, sources, engagement per video x 15-minute bucket),
and each session's merged watched ranges (`sessions.islands`).

The tables are created here; `vidmetrics migrate` (and `serve`) then fill them from the
existing sessions with a progress bar (app/storage/rebuild.py: backfill, set-based).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.model.rollup import BREAKDOWN_COLUMNS, REACHED_COLUMNS

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("sessions", sa.Column("islands", sa.ARRAY(sa.Float), nullable=True))
    op.create_table(
        "rollup_plays",
        sa.Column("video_id", sa.BigInteger, nullable=False),
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("class", sa.SmallInteger, nullable=False),
        sa.Column("sessions", sa.Integer, nullable=False),
        sa.Column("watch_seconds", sa.Float, nullable=False),
        *[
            sa.Column(c, sa.Integer, nullable=False, server_default=sa.text("0"))
            for c in BREAKDOWN_COLUMNS
        ],
        sa.PrimaryKeyConstraint("video_id", "bucket", "class", name="rollup_plays_pkey"),
    )
    op.create_table(
        "rollup_sources",
        sa.Column("video_id", sa.BigInteger, nullable=False),
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("page", sa.Text, nullable=False),
        *[
            sa.Column(c, sa.Integer, nullable=False, server_default=sa.text("0"))
            for c in REACHED_COLUMNS
        ],
        sa.PrimaryKeyConstraint("video_id", "bucket", "page", name="rollup_sources_pkey"),
    )
    # the same per ingest key (all its videos): what a key-wide question reads
    op.create_table(
        "rollup_key_plays",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("class", sa.SmallInteger, nullable=False),
        sa.Column("sessions", sa.Integer, nullable=False),
        sa.Column("watch_seconds", sa.Float, nullable=False),
        *[
            sa.Column(c, sa.Integer, nullable=False, server_default=sa.text("0"))
            for c in BREAKDOWN_COLUMNS
        ],
        sa.PrimaryKeyConstraint("key", "bucket", "class", name="rollup_key_plays_pkey"),
    )
    op.create_table(
        "rollup_key_sources",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("page", sa.Text, nullable=False),
        *[
            sa.Column(c, sa.Integer, nullable=False, server_default=sa.text("0"))
            for c in REACHED_COLUMNS
        ],
        sa.PrimaryKeyConstraint("key", "bucket", "page", name="rollup_key_sources_pkey"),
    )
    op.create_table(
        "rollup_engagement",
        sa.Column("video_id", sa.BigInteger, nullable=False),
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("ranges", sa.SmallInteger, nullable=False),
        sa.Column("duration", sa.Float, nullable=False),
        sa.Column("sessions", sa.Integer, nullable=False),
        sa.Column("counts", sa.ARRAY(sa.Integer), nullable=False),
        sa.PrimaryKeyConstraint(
            "video_id", "ranges", "bucket", "duration", name="rollup_engagement_pkey"
        ),
    )
    op.create_table(
        "rollup_state",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("done_at", TZ, nullable=True),
    )
    op.execute("INSERT INTO rollup_state (name) VALUES ('backfill')")


def downgrade() -> None:
    for table in (
        "rollup_state",
        "rollup_engagement",
        "rollup_key_sources",
        "rollup_key_plays",
        "rollup_sources",
        "rollup_plays",
    ):
        op.drop_table(table)
    op.drop_column("sessions", "islands")

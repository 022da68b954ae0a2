"""Impressions (every join of a video, played or not) and completion: sessions gain
`ended` and `distinct_seconds`; rollups for impressions and completion per video and per
key x 15-minute bucket. The rollup backfill runs again (all rollups are rebuilt from the
sessions; impressions start with this version: joins were not recorded before).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from app.model.rollup import COMPLETION_COLUMNS
from app.storage import timescale

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _completion(name: str, owner: sa.Column) -> None:
    op.create_table(
        name,
        owner,
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("class", sa.SmallInteger, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        *[
            sa.Column(c, sa.Integer, nullable=False, server_default=sa.text("0"))
            for c in COMPLETION_COLUMNS
        ],
        sa.Column("percent_sum", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint(owner.name, "bucket", "class", "device", name=f"{name}_pkey"),
    )


def upgrade() -> None:
    op.add_column(
        "sessions", sa.Column("ended", sa.Boolean, nullable=False, server_default=sa.text("false"))
    )
    op.add_column(
        "sessions",
        sa.Column("distinct_seconds", sa.Float, nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "impressions",
        sa.Column("video_id", sa.BigInteger, nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("browser", sa.Text, nullable=False),
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("page", sa.Text, nullable=True),
        sa.Column("session_data", JSONB, nullable=True),
    )
    op.create_index("impressions_video_at_idx", "impressions", ["video_id", "at"])
    # newest sessions first, whatever the video (the session list)
    op.create_index("sessions_started_idx", "sessions", ["started_at"])
    op.create_table(
        "rollup_impressions",
        sa.Column("video_id", sa.BigInteger, nullable=False),
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("impressions", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("video_id", "bucket", name="rollup_impressions_pkey"),
    )
    op.create_table(
        "rollup_key_impressions",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("impressions", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("key", "bucket", name="rollup_key_impressions_pkey"),
    )
    _completion("rollup_completion", sa.Column("video_id", sa.BigInteger, nullable=False))
    _completion("rollup_key_completion", sa.Column("key", sa.Text, nullable=False))
    bind = op.get_bind()
    if (
        timescale.is_enabled_sync(bind)
        and bind.execute(
            sa.text(
                "SELECT 1 FROM timescaledb_information.hypertables "
                "WHERE hypertable_name = 'sessions'"
            )
        ).first()
    ):
        bind.exec_driver_sql(
            "SELECT create_hypertable('impressions', 'at', chunk_time_interval "
            "=> INTERVAL '7 days', migrate_data => true, if_not_exists => true)"
        )
    op.execute("UPDATE rollup_state SET done_at = NULL WHERE name = 'backfill'")


def downgrade() -> None:
    for table in (
        "rollup_key_completion",
        "rollup_completion",
        "rollup_key_impressions",
        "rollup_impressions",
        "impressions",
    ):
        op.drop_table(table)
    op.drop_index("sessions_started_idx", "sessions")
    op.drop_column("sessions", "distinct_seconds")
    op.drop_column("sessions", "ended")

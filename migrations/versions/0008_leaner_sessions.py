"""Leaner session rows. Time indexes as BRIN: `sessions.started_at` (and `impressions.at`,
which had none) are only range-scanned by retention; every query filters by video first
and uses (video_id, started_at). Rows arrive in time order, so a block-range index answers
those scans at a few kilobytes, where the B-tree cost ~40 bytes per session. And
`sessions.distinct_seconds` goes: it is the islands' total length, which the queries now
sum from the islands (rollups.DISTINCT_SECONDS), the same float8 figure.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.rollups import DISTINCT_SECONDS

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("sessions_started_idx", table_name="sessions")
    op.create_index("sessions_started_brin", "sessions", ["started_at"], postgresql_using="brin")
    op.create_index("impressions_at_brin", "impressions", ["at"], postgresql_using="brin")
    op.drop_column("sessions", "distinct_seconds")


def downgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column("distinct_seconds", sa.Float, nullable=False, server_default=sa.text("0")),
    )
    op.execute(
        f"UPDATE sessions s SET distinct_seconds = {DISTINCT_SECONDS} "
        "WHERE cardinality(s.islands) > 0"
    )
    op.drop_index("impressions_at_brin", table_name="impressions")
    op.drop_index("sessions_started_brin", table_name="sessions")
    op.create_index("sessions_started_idx", "sessions", ["started_at"])

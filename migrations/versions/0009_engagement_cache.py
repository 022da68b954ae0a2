"""Engagement across videos of different durations, cached per 15-minute bucket: the
plays rollups gain `changes` (writes of the bucket's sessions, ever), and the unlogged
`engagement_cache` keeps a key's per-bucket engagement for a (ranges, length), and the
bucket's distinct durations, together with the change count they were computed at.
Existing rows start at 0 changes; the cache starts empty.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("rollup_plays", "rollup_key_plays"):
        op.add_column(
            table, sa.Column("changes", sa.BigInteger, nullable=False, server_default=sa.text("0"))
        )
    op.create_table(
        "engagement_cache",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("ranges", sa.SmallInteger, nullable=False),
        sa.Column("length", sa.Float, nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("counts", ARRAY(sa.Integer), nullable=False),
        sa.Column("durations", ARRAY(sa.Float), nullable=False),
        sa.PrimaryKeyConstraint("key", "ranges", "length", "bucket", name="engagement_cache_pkey"),
        prefixes=["UNLOGGED"],
    )


def downgrade() -> None:
    op.drop_table("engagement_cache")
    for table in ("rollup_plays", "rollup_key_plays"):
        op.drop_column(table, "changes")

"""Rollup shards: every rollup row gains `shard`, the writing process's (the connection
setting vidmetrics.shard, 0 when unset), in its primary key. Processes writing the same
bucket (serve --workers, several machines) then update rows of their own instead of
queueing on one row's lock; queries already sum rows, so answers are unchanged. Existing
rows become shard 0.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SHARD_DEFAULT = "coalesce(nullif(current_setting('vidmetrics.shard', true), '')::smallint, 0)"
# table -> its primary key columns before the shard
KEYS = {
    "rollup_plays": ("video_id", "bucket", "class"),
    "rollup_key_plays": ("key", "bucket", "class"),
    "rollup_sources": ("video_id", "bucket", "page"),
    "rollup_key_sources": ("key", "bucket", "page"),
    "rollup_engagement": ("video_id", "ranges", "bucket", "duration"),
    "rollup_impressions": ("video_id", "bucket"),
    "rollup_key_impressions": ("key", "bucket"),
    "rollup_completion": ("video_id", "bucket", "class", "device"),
    "rollup_key_completion": ("key", "bucket", "class", "device"),
    "rollup_qoe": ("video_id", "bucket", "browser", "platform", "device"),
    "rollup_key_qoe": ("key", "bucket", "browser", "platform", "device"),
    "rollup_qoe_hist": ("video_id", "bucket", "metric", "idx"),
    "rollup_key_qoe_hist": ("key", "bucket", "metric", "idx"),
}


def upgrade() -> None:
    for table, key in KEYS.items():
        op.add_column(
            table,
            sa.Column(
                "shard", sa.SmallInteger, nullable=False, server_default=sa.text(SHARD_DEFAULT)
            ),
        )
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, [*key, "shard"])


def downgrade() -> None:
    # one row per key again: drop the other shards' rows, and rebuild every rollup from the
    # sessions on the next start (the backfill)
    for table, key in KEYS.items():
        op.execute(f"DELETE FROM {table} WHERE shard <> 0")
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, list(key))
        op.drop_column(table, "shard")
    op.execute("UPDATE rollup_state SET done_at = NULL WHERE name = 'backfill'")

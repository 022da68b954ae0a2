"""Sources per ingest key become hourly (rollup_key_sources' `bucket` is now an hour):
the rollups are rebuilt once from the stored sessions (set-based, right after this
migration, as `vidmetrics migrate` and `serve` do for a pending backfill).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE rollup_state SET done_at = NULL WHERE name = 'backfill'")


def downgrade() -> None:
    # 15-minute key rows again: rebuilt the same way, by the code of that version
    op.execute("UPDATE rollup_state SET done_at = NULL WHERE name = 'backfill'")

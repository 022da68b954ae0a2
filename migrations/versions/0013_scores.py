"""Viewer-experience scores (app/model/scores.py): sessions gain `quick_exit` (an exit
before start within 1 s of the request) and their upscaling while playing (the largest,
and the upscale integrated over the seconds shown); the QoE rollups gain, per score, the
views it applies to and the sum of their scores. The rollups are rebuilt from the
sessions at the next start (as after 0005). Sessions from before this revision have no
upscaling data (no video quality score); their exits before start get `quick_exit` from
ended_at − started_at, which is when the exit was seen.

Also the session list's `low_quality` issue: a partial index like 0012's.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SCORES = ("success", "startup", "smooth", "quality", "experience")
SESSION_COLUMNS = [
    ("quick_exit", sa.Boolean),
    ("upscale_max", sa.Float),
    ("upscale_sum", sa.Float),
    ("upscale_seconds", sa.Float),
]
LOW_QUALITY = "upscale_max > 0.25::float8"


def upgrade() -> None:
    for name, kind in SESSION_COLUMNS:
        op.add_column("sessions", sa.Column(name, kind, nullable=True))
    op.execute(
        "UPDATE sessions SET quick_exit = ended_at - started_at < interval '1 second' "
        "WHERE exited_before_start"
    )
    for table in ("rollup_qoe", "rollup_key_qoe"):
        for score in SCORES:
            op.add_column(
                table,
                sa.Column(f"{score}_views", sa.Integer, nullable=False, server_default="0"),
            )
            op.add_column(
                table,
                sa.Column(f"{score}_score", sa.Float, nullable=False, server_default="0"),
            )
    op.execute(
        "CREATE INDEX IF NOT EXISTS sessions_issue_low_quality_idx "
        f"ON sessions (video_id, started_at) WHERE {LOW_QUALITY}"
    )
    op.execute("UPDATE rollup_state SET done_at = NULL WHERE name = 'backfill'")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS sessions_issue_low_quality_idx")
    for table in ("rollup_qoe", "rollup_key_qoe"):
        for score in reversed(SCORES):
            op.drop_column(table, f"{score}_score")
            op.drop_column(table, f"{score}_views")
    for name, _ in reversed(SESSION_COLUMNS):
        op.drop_column("sessions", name)

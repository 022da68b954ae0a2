"""Sessions with issues: partial indexes, one per issue of the session list's `issue`
filter, on (video_id, started_at) like sessions_video_started_idx, so a page of failed or
stalled sessions is found by an index at any size (the predicates are those of
app/storage/tables.py ISSUE_PREDICATES, slow_start at the default 4 s).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# name -> predicate (written as the queries write them: the planner matches them as text)
ISSUES = {
    "failed": "failure IS NOT NULL",
    "startup_failure": "failed_before_start",
    "exit_before_start": "exited_before_start",
    "stalled": "rebuffer_count >= 1",
    "slow_start": "startup_ms > 4000.0::float8",
}


def upgrade() -> None:
    for name, predicate in ISSUES.items():
        op.execute(
            f"CREATE INDEX IF NOT EXISTS sessions_issue_{name}_idx "
            f"ON sessions (video_id, started_at) WHERE {predicate}"
        )


def downgrade() -> None:
    for name in ISSUES:
        op.execute(f"DROP INDEX IF EXISTS sessions_issue_{name}_idx")

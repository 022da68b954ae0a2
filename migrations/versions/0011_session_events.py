"""Overflow rows for long timelines: a session's row keeps its first raw events up to
app/storage/timeline.py ROW_BYTES; later writes of a long session go to `session_events`,
one row per write, so an append never rewrites a long value.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_events",
        sa.Column("session_id", sa.BigInteger, nullable=False),
        sa.Column("session_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("events", sa.LargeBinary, nullable=False),
    )
    op.create_index("session_events_session_idx", "session_events", ["session_id", "seq"])


def downgrade() -> None:
    # back into the rows (order kept), then the table goes
    op.execute("""
        UPDATE sessions s SET events = coalesce(s.events, ''::bytea) || o.events
          FROM (SELECT session_id, session_started_at,
                       string_agg(events, ''::bytea ORDER BY seq) AS events
                  FROM session_events GROUP BY 1, 2) o
         WHERE s.id = o.session_id AND s.started_at = o.session_started_at
    """)
    op.drop_table("session_events")

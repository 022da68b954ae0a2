"""Export outbox: sessions that ended and are still to be posted to METRICS_EXPORT_WEBHOOK.

Written in the same transaction as a session's final rows, so an ended session is never
lost for the webhook, even if the process dies right after acknowledging it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "export_outbox",
        sa.Column("session_id", sa.BigInteger, nullable=False),
        sa.Column("session_started_at", TZ, nullable=False),
        sa.Column("enqueued_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("session_id", name="export_outbox_pkey"),
    )
    op.create_index("export_outbox_due_idx", "export_outbox", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_table("export_outbox")

"""Quality of experience: sessions gain `played` (false for a view that was requested or
failed but never started playing) and per-session QoE figures (NULL for sessions from
clients that send none); rollups of them per video and per key x hour x browser x
platform x device, with startup and seek-latency histograms (app/model/quantiles.py) kept as int
arrays indexed by histogram bucket (merged by `vidmetrics_hist_add`; for breakdowns), and
the same histograms without the device classes as one row per histogram bucket (for
totals: a plain GROUP BY, no arrays to unnest).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)

# the QoE rollups' sums as this revision made them (0013 adds the score columns)
QOE_COLUMNS = [
    "views",
    "startups",
    "watch_seconds",
    "rebuffer_count",
    "rebuffer_seconds",
    "failures",
    "startup_failures",
    "exits",
    "seek_views",
]

# a + b for two histograms stored as int arrays whose subscripts are histogram buckets
# (arrays may start at any subscript and grow both ways; NULL elements count as 0)
HIST_ADD = """
CREATE OR REPLACE FUNCTION vidmetrics_hist_add(a int[], b int[]) RETURNS int[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    r int[] := a;
    i int;
BEGIN
    IF b IS NULL OR cardinality(b) = 0 THEN RETURN a; END IF;
    IF a IS NULL OR cardinality(a) = 0 THEN RETURN b; END IF;
    FOR i IN array_lower(b, 1) .. array_upper(b, 1) LOOP
        IF b[i] IS NOT NULL AND b[i] <> 0 THEN
            r[i] := coalesce(r[i], 0) + b[i];
        END IF;
    END LOOP;
    RETURN r;
END $$
"""


def _session_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("played", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("qoe", sa.Boolean, nullable=True),
        sa.Column("startup_ms", sa.Float, nullable=True),
        sa.Column("rebuffer_count", sa.Integer, nullable=True),
        sa.Column("rebuffer_seconds", sa.Float, nullable=True),
        sa.Column("seek_count", sa.Integer, nullable=True),
        sa.Column("seek_ms", sa.Float, nullable=True),
        sa.Column("failure", sa.SmallInteger, nullable=True),
        sa.Column("failed_before_start", sa.Boolean, nullable=True),
        sa.Column("exited_before_start", sa.Boolean, nullable=True),
    ]


def _qoe(name: str, owner: sa.Column) -> None:
    op.create_table(
        name,
        owner,
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("browser", sa.Text, nullable=False),
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        *[
            sa.Column(
                c,
                sa.Float if c.endswith("seconds") else sa.Integer,
                nullable=False,
                server_default=sa.text("0"),
            )
            for c in QOE_COLUMNS
        ],
        sa.Column("startup_hist", ARRAY(sa.Integer), nullable=True),
        sa.Column("seek_hist", ARRAY(sa.Integer), nullable=True),
        sa.PrimaryKeyConstraint(
            owner.name, "bucket", "browser", "platform", "device", name=f"{name}_pkey"
        ),
    )


def _hist(name: str, owner: sa.Column) -> None:
    op.create_table(
        name,
        owner,
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("metric", sa.SmallInteger, nullable=False),
        sa.Column("idx", sa.SmallInteger, nullable=False),
        sa.Column("views", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint(owner.name, "bucket", "metric", "idx", name=f"{name}_pkey"),
    )


def upgrade() -> None:
    for column in _session_columns():
        op.add_column("sessions", column)
    op.execute(HIST_ADD)
    _qoe("rollup_qoe", sa.Column("video_id", sa.BigInteger, nullable=False))
    _qoe("rollup_key_qoe", sa.Column("key", sa.Text, nullable=False))
    _hist("rollup_qoe_hist", sa.Column("video_id", sa.BigInteger, nullable=False))
    _hist("rollup_key_qoe_hist", sa.Column("key", sa.Text, nullable=False))
    # rebuild every rollup from the sessions (plays now count played sessions only)
    op.execute("UPDATE rollup_state SET done_at = NULL WHERE name = 'backfill'")


def downgrade() -> None:
    op.drop_table("rollup_key_qoe_hist")
    op.drop_table("rollup_qoe_hist")
    op.drop_table("rollup_key_qoe")
    op.drop_table("rollup_qoe")
    op.execute("DROP FUNCTION IF EXISTS vidmetrics_hist_add(int[], int[])")
    for column in reversed(_session_columns()):
        op.drop_column("sessions", column.name)

"""The governator's telemetry samples, per-minute roll-ups and decisions.

Revision ID: 0002_governator
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_governator"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen here (not imported from inferno.store.governator): a migration never changes.
_INT_SIGNALS = ("ready", "starting", "draining", "in_flight", "queued", "errors")
_FLOAT_SIGNALS = ("request_rate", "tokens_per_second", "queue_wait_p95_s", "ttft_p95_s",
                  "unserved_rate")


def upgrade() -> None:
    op.create_table(
        "inferno_gov_samples",
        sa.Column("pool", sa.Text, primary_key=True),
        sa.Column("at", sa.Float, primary_key=True),
        *(sa.Column(n, sa.BigInteger, nullable=True) for n in _INT_SIGNALS),
        *(sa.Column(n, sa.Float, nullable=True) for n in _FLOAT_SIGNALS),
        sa.Column("extra", sa.JSON, nullable=True),
    )
    op.create_index("ix_inferno_gov_samples_at", "inferno_gov_samples", ["at"])
    op.create_table(
        "inferno_gov_rollups",
        sa.Column("pool", sa.Text, primary_key=True),
        sa.Column("minute", sa.Float, primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        *(sa.Column(f"{n}_{stat}", sa.Float, nullable=True)
          for n in (*_INT_SIGNALS, *_FLOAT_SIGNALS) for stat in ("mean", "max")),
    )
    op.create_index("ix_inferno_gov_rollups_minute", "inferno_gov_rollups", ["minute"])
    op.create_table(
        "inferno_gov_decisions",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("pool", sa.Text, nullable=False),
        sa.Column("current", sa.Integer, nullable=False),
        sa.Column("desired", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("node_type", sa.Text, nullable=False),
        sa.Column("signals", sa.JSON, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
    )
    op.create_index("ix_inferno_gov_decisions_at", "inferno_gov_decisions", ["at"])
    op.create_index("ix_inferno_gov_decisions_pool_at", "inferno_gov_decisions", ["pool", "at"])


def downgrade() -> None:
    op.drop_table("inferno_gov_decisions")
    op.drop_table("inferno_gov_rollups")
    op.drop_table("inferno_gov_samples")

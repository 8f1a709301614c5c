"""The audit trail: append-only rows chained by hash, and the chain's head.

Revision ID: 0005_audit
Revises: 0004_request_log_filters
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_audit"
down_revision = "0004_request_log_filters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inferno_audit",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("outcome", sa.String(512), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON, nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_inferno_audit_ts", "inferno_audit", ["ts"])
    op.create_index("ix_inferno_audit_actor", "inferno_audit", ["actor", "seq"])
    op.create_index("ix_inferno_audit_action", "inferno_audit", ["action", "seq"])
    head = op.create_table(
        "inferno_audit_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    # The head exists from the start: appenders lock it, none ever has to create it.
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": "0" * 64}])


def downgrade() -> None:
    op.drop_table("inferno_audit_head")
    op.drop_table("inferno_audit")

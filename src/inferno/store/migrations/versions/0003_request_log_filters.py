"""Indexes for the request log filtered by key or model, newest first (the dashboard).

Revision ID: 0003_request_log_filters
Revises: 0002_governator
"""

from __future__ import annotations

from alembic import op

revision = "0003_request_log_filters"
down_revision = "0002_governator"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_inferno_request_log_key_ts", "inferno_request_log", ["key_id", "ts"])
    op.create_index("ix_inferno_request_log_model_ts", "inferno_request_log", ["model", "ts"])


def downgrade() -> None:
    op.drop_index("ix_inferno_request_log_model_ts", "inferno_request_log")
    op.drop_index("ix_inferno_request_log_key_ts", "inferno_request_log")

"""Stored Responses API responses (``previous_response_id``, retrieve, delete).

Revision ID: 0003_responses
Revises: 0002_governator
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_responses"
down_revision = "0002_governator"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inferno_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("input_items", sa.JSON, nullable=False),
        sa.Column("messages", sa.JSON, nullable=False),
    )
    op.create_index("ix_inferno_responses_owner", "inferno_responses", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_table("inferno_responses")

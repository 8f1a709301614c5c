"""The Batch and Files API: files, batches, batch items (the work queue) and schedules.

Revision ID: 0006_batch
Revises: 0005_audit
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_batch"
down_revision = "0005_audit"
branch_labels = None
depends_on = None

_STAMPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
           "cancelled")


def upgrade() -> None:
    op.create_table(
        "inferno_files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
    )
    op.create_index("ix_inferno_files_owner_created", "inferno_files", ["owner", "created_at"])
    op.create_index("ix_inferno_files_sha256", "inferno_files", ["sha256"])
    op.create_table(
        "inferno_batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("errors", sa.JSON, nullable=True),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        *(sa.Column(f"{s}_at", sa.Float, nullable=True) for s in _STAMPS),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("completed", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("idempotency", sa.String(300), nullable=True, unique=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires", sa.Float, nullable=True),
    )
    op.create_index("ix_inferno_batches_owner_created", "inferno_batches",
                    ["owner", "created_at"])
    op.create_index("ix_inferno_batches_status", "inferno_batches", ["status"])
    op.create_table(
        "inferno_batch_items",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("custom_id", sa.Text, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires", sa.Float, nullable=True),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_inferno_batch_items_claim", "inferno_batch_items",
                    ["state", "next_attempt_at"])
    op.create_index("ix_inferno_batch_items_batch_state", "inferno_batch_items",
                    ["batch_id", "state"])
    op.create_table(
        "inferno_batch_schedules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("cron", sa.String(100), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("next_run_at", sa.Float, nullable=False),
        sa.Column("last_run_at", sa.Float, nullable=True),
        sa.Column("last_batch_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inferno_batch_schedules")
    op.drop_table("inferno_batch_items")
    op.drop_table("inferno_batches")
    op.drop_table("inferno_files")

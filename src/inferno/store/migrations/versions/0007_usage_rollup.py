"""The usage roll-up: requests, errors, cache hits, tokens and cost per UTC hour, key and
model, kept up to date as request-log rows are written; usage queries read it instead of
scanning the log. Existing log rows are rolled up here, in one statement.

Revision ID: 0007_usage_rollup
Revises: 0006_batch
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_usage_rollup"
down_revision = "0006_batch"
branch_labels = None
depends_on = None

# floor(ts) // 3600 in integer arithmetic (ts is positive): the same hour Python computes.
_HOUR = {"postgresql": "floor(ts)::bigint / 3600", "sqlite": "CAST(ts AS INTEGER) / 3600"}


def upgrade() -> None:
    op.create_table(
        "inferno_usage_rollup",
        sa.Column("hour", sa.Integer, primary_key=True),
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("cache_hits", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
    )
    hour = _HOUR[op.get_bind().dialect.name]
    op.execute(
        "INSERT INTO inferno_usage_rollup (hour, key_id, model, requests, errors, cache_hits, "
        "prompt_tokens, completion_tokens, cost) "
        f"SELECT {hour}, COALESCE(key_id, ''), COALESCE(model, ''), COUNT(*), "
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN cache_hit THEN 1 ELSE 0 END), "
        "SUM(prompt_tokens), SUM(completion_tokens), SUM(cost) "
        f"FROM inferno_request_log GROUP BY {hour}, COALESCE(key_id, ''), COALESCE(model, '')")


def downgrade() -> None:
    op.drop_table("inferno_usage_rollup")

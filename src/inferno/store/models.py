"""The schema, as SQLAlchemy Core tables. Changes ship as Alembic migrations (versions/)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# One row per API key. Only the SHA-256 of the key is stored; ``id`` is the public part
# printed inside the key itself (``inf_<id>_<secret>``) and used to show it afterwards.
api_keys = Table(
    "inferno_api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("models", JSON, nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

# One row per client request, written in batches by the proxy's background writer.
request_log = Table(
    "inferno_request_log", metadata,
    Column("request_id", String(40), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("key_id", String(64), nullable=True),
    Column("route", String(64), nullable=False),
    Column("model", String(256), nullable=True),
    Column("node", String(128), nullable=True),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("stream", Boolean, nullable=False, default=False),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("completion_tokens", BigInteger, nullable=False, default=0),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("cost", Float, nullable=False, default=0.0),
    Column("cache_hit", Boolean, nullable=False, default=False),
    Column("request_body", Text, nullable=True),
    Column("response_body", Text, nullable=True),
)
# Covering the usage roll-up (GROUP BY day, key, model): read from the index alone.
Index("ix_inferno_request_log_usage", *(request_log.c[n] for n in (
    "day", "key_id", "model", "status", "prompt_tokens", "completion_tokens", "cost",
    "cache_hit")))
Index("ix_inferno_request_log_ts", request_log.c.ts)
Index("ix_inferno_request_log_key_ts", request_log.c.key_id, request_log.c.ts)
Index("ix_inferno_request_log_model_ts", request_log.c.model, request_log.c.ts)

# One row per stored Responses API response, readable only by the key that created it
# (``owner`` is the key id; "" when auth is off). ``messages`` is the whole conversation up
# to and including this response, as chat-completions messages: what a follow-up with
# ``previous_response_id`` sends before its own input.
responses = Table(
    "inferno_responses", metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("body", JSON, nullable=False),
    Column("input_items", JSON, nullable=False),
    Column("messages", JSON, nullable=False),
)
Index("ix_inferno_responses_owner", responses.c.owner, responses.c.created_at)

# Usage per UTC hour, key and model, kept up to date in the transaction that writes the
# request-log rows (store/usage.py): what usage queries read instead of scanning the log.
# "No key" / "no model" are stored as "" (key columns cannot be NULL) and read back as None.
# Rows outlive the request-log rows they count: pruning the log leaves usage totals alone.
usage_rollup = Table(
    "inferno_usage_rollup", metadata,
    Column("hour", Integer, primary_key=True),  # unix hours: floor(ts / 3600)
    Column("key_id", String(64), primary_key=True),
    Column("model", String(256), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("cache_hits", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cost", Float, nullable=False),
)

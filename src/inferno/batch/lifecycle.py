"""Creating a batch, and OpenAI's batch object from its row.

Status machine (OpenAI's): ``validating -> in_progress -> finalizing -> completed``;
``validating -> failed`` (the input has errors); ``in_progress -> expired`` (the completion
window ran out; finished lines are kept); ``validating | in_progress -> cancelling ->
cancelled`` (items in flight finish, the rest are cancelled).
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from inferno.batch.types import ENDPOINTS
from inferno.core.errors import InvalidRequest
from inferno.store import Store

OPEN_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
_WINDOW = re.compile(r"([1-9]\d*)(h|d)")
_STAMPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
           "cancelled")


def window_seconds(window: object) -> int:
    """``24h`` and other durations from 1h to 7d (``Nh`` or ``Nd``)."""
    m = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    seconds = int(m.group(1)) * (3600 if m.group(2) == "h" else 86400) if m else 0
    if not 3600 <= seconds <= 7 * 86400:
        raise InvalidRequest("'completion_window' must be a duration from 1h to 7d, e.g. 24h.",
                             param="completion_window")
    return seconds


def check_metadata(metadata: object) -> dict[str, str] | None:
    if metadata is None:
        return None
    if (not isinstance(metadata, dict) or len(metadata) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in metadata.items())):
        raise InvalidRequest("'metadata' must be at most 16 string pairs (keys up to 64, "
                             "values up to 512 characters).", param="metadata")
    return dict(metadata)


def check_endpoint(endpoint: object) -> str:
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(f"'endpoint' must be one of {', '.join(ENDPOINTS)}.",
                             param="endpoint")
    return str(endpoint)


async def create_batch(store: Store, *, owner: str | None, input_file_id: str, endpoint: str,
                       completion_window: str, metadata: dict[str, str] | None,
                       idempotency: str | None = None) -> dict[str, Any]:
    now = time.time()
    row: dict[str, Any] = {
        "id": f"batch_{secrets.token_hex(12)}", "owner": owner, "endpoint": endpoint,
        "input_file_id": input_file_id, "completion_window": completion_window,
        "status": "validating", "metadata": metadata, "errors": None,
        "output_file_id": None, "error_file_id": None, "created_at": now,
        "expires_at": now + window_seconds(completion_window),
        **{f"{s}_at": None for s in _STAMPS}, "total": 0, "completed": 0, "failed": 0,
        "prompt_tokens": 0, "completion_tokens": 0, "idempotency": idempotency,
        "lease_owner": None, "lease_expires": None}
    return await store.batches.create(row)


def batch_object(row: dict[str, Any], live: dict[str, int] | None = None) -> dict[str, Any]:
    """OpenAI's batch object; ``live``: item counts by state while the batch is open."""
    if live is not None and row["status"] in OPEN_STATUSES:
        counts = {"total": sum(live.values()), "completed": live.get("done", 0),
                  "failed": live.get("failed", 0)}
    else:
        counts = {"total": row["total"], "completed": row["completed"], "failed": row["failed"]}
    p, c = int(row["prompt_tokens"]), int(row["completion_tokens"])
    stamp = {f"{s}_at": int(row[f"{s}_at"]) if row[f"{s}_at"] else None for s in _STAMPS}
    return {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"],
        "errors": row["errors"], "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"], "status": row["status"],
        "output_file_id": row["output_file_id"], "error_file_id": row["error_file_id"],
        "created_at": int(row["created_at"]), "expires_at": int(row["expires_at"]),
        **stamp, "request_counts": counts, "metadata": row["metadata"],
        "usage": {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": p + c}}

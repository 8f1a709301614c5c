"""A finished batch's output and error files, built from its items in line order.

Both files come from one pass over the items, so each item is in exactly one of them.
File ids derive from the batch id, and line ids from the batch id and line, so a
finalisation repeated after a crash writes the same content under the same file ids.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from inferno.batch.files import FileStore
from inferno.store import Store

_FLUSH = 256 * 1024
_ENDED = {
    "cancelled": ("batch_cancelled", "This request was not executed: the batch was cancelled."),
    "expired": ("batch_expired",
                "This request could not be executed before the completion window expired."),
}


def ended_line(batch_id: str, line: int, custom_id: str, state: str) -> str:
    code, message = _ENDED[state]
    return orjson.dumps({"id": _request_id(batch_id, line), "custom_id": custom_id,
                         "response": None, "error": {"code": code, "message": message}}
                        ).decode()


def _request_id(batch_id: str, line: int) -> str:
    # Derived, not random: a finalisation repeated after a crash writes the same bytes.
    return "batch_req_" + hashlib.blake2b(f"{batch_id}:{line}".encode(),
                                          digest_size=12).hexdigest()


async def write_results(store: Store, files: FileStore, batch: dict[str, Any], end: str
                        ) -> dict[str, Any]:
    """Write both files from one pass over the items (so an item is in exactly one of
    them); returns the batch columns to set (file ids, counts, usage). ``end``: the
    batch's final status; items still open then get an error line saying why."""
    batch_id = batch["id"]
    counts = {"total": 0, "completed": 0, "failed": 0}
    ended = end if end in _ENDED else "expired"
    with files.generated() as output, files.generated() as errors:
        sinks = {"output": output, "error": errors}
        bufs: dict[str, list[str]] = {"output": [], "error": []}
        sizes = {"output": 0, "error": 0}
        async for line, custom_id, state, result in store.batch_items.outcomes(batch_id):
            counts["total"] += 1
            counts["completed"] += state == "done"
            counts["failed"] += state == "failed"
            kind, text = _route(state, result)
            if text is None:
                text = ended_line(batch_id, line, custom_id,
                                  state if state in _ENDED else ended)
            bufs[kind].append(text)
            sizes[kind] += len(text) + 1
            if sizes[kind] >= _FLUSH:
                sinks[kind].write(("\n".join(bufs[kind]) + "\n").encode())
                bufs[kind], sizes[kind] = [], 0
        outputs: dict[str, str | None] = {}
        for kind, sink in sinks.items():
            if bufs[kind]:
                sink.write(("\n".join(bufs[kind]) + "\n").encode())
            if sink.size == 0:
                outputs[kind] = None
                continue
            sha, nbytes = await sink.store()
            file_id = f"file-{batch_id.removeprefix('batch_')}-{kind}"
            await store.files.put(file_id, {
                "owner": batch["owner"], "purpose": "batch_output",
                "filename": f"{batch_id}_{kind}.jsonl", "bytes": nbytes, "sha256": sha,
                "created_at": time.time(), "expires_at": None})
            outputs[kind] = file_id
    prompt, completion = await store.batch_items.token_totals(batch_id)
    return {"output_file_id": outputs["output"], "error_file_id": outputs["error"],
            "prompt_tokens": prompt, "completion_tokens": completion, **counts}


def _route(state: str, result: str | None) -> tuple[str, str | None]:
    """Which file an item's line goes to, and the line (None: an ended line is due)."""
    if state == "done":
        return "output", result
    if state == "failed" and result is not None:
        return "error", result
    return "error", None

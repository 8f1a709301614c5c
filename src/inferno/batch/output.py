"""A finished batch's output and error files, built from its items in line order.

File ids derive from the batch id, so a finalisation repeated after a crash writes the
same content under the same digest and finds its file rows already there.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
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


def ended_line(custom_id: str, state: str) -> str:
    import secrets

    code, message = _ENDED[state]
    return orjson.dumps({"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id,
                         "response": None, "error": {"code": code, "message": message}}
                        ).decode()


async def write_results(store: Store, files: FileStore, batch: dict[str, Any]
                        ) -> dict[str, Any]:
    """Write both files; returns the batch columns to set (file ids, counts, usage)."""
    batch_id = batch["id"]
    counts = {"total": 0, "completed": 0, "failed": 0}
    outputs: dict[str, str | None] = {}
    for kind in ("output", "error"):
        async def lines(kind: str = kind) -> AsyncIterator[bytes]:
            buf: list[str] = []
            size = 0
            async for _line, custom_id, state, result in store.batch_items.outcomes(batch_id):
                if kind == "output":
                    counts["total"] += 1
                    counts["completed"] += state == "done"
                    counts["failed"] += state == "failed"
                text = _route(kind, custom_id, state, result)
                if text is None:
                    continue
                buf.append(text)
                size += len(text) + 1
                if size >= _FLUSH:
                    yield ("\n".join(buf) + "\n").encode()
                    buf, size = [], 0
            if buf:
                yield ("\n".join(buf) + "\n").encode()

        sha, nbytes = await files.write(lines())
        if nbytes == 0:
            outputs[kind] = None
            continue
        file_id = f"file-{batch_id.removeprefix('batch_')}-{kind}"
        await store.files.create({
            "id": file_id, "owner": batch["owner"], "purpose": "batch_output",
            "filename": f"{batch_id}_{kind}.jsonl", "bytes": nbytes, "sha256": sha,
            "created_at": time.time(), "expires_at": None})
        outputs[kind] = file_id
    prompt, completion = await store.batch_items.token_totals(batch_id)
    return {"output_file_id": outputs["output"], "error_file_id": outputs["error"],
            "prompt_tokens": prompt, "completion_tokens": completion, **counts}


def _route(kind: str, custom_id: str, state: str, result: str | None) -> str | None:
    if state == "done":
        return result if kind == "output" else None
    if kind == "output":
        return None
    if state == "failed" and result is not None:
        return result
    return ended_line(custom_id, state if state in _ENDED else "expired")

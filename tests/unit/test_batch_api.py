"""The Batch and Files API end to end with the official openai SDK, unmodified, against an
in-process proxy with fake nodes: upload, create, retrieve, list, content, cancel, delete;
retries and dead letters; validation errors; expiry and cancel keep finished lines."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from inferno.backend.node import BackendNode
from inferno.core.errors import InvalidRequest
from inferno.proxy.gateway import Gateway
from inferno.proxy.security.keys import create_key
from tests.batch_support import (
    FlakyEngine,
    completion,
    jsonl,
    parse_lines,
    start_batch_gateway,
    start_node,
    until_served,
    wait_status,
)
from tests.polling import eventually


class Env:
    def __init__(self, gw: Gateway, node: BackendNode, engine: FlakyEngine) -> None:
        self.gw, self.node, self.engine = gw, node, engine
        self.url = f"http://127.0.0.1:{gw.server.port}/v1"

    def client(self, key: str = "none") -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0)


@pytest_asyncio.fixture
async def env(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    marker = request.node.get_closest_marker("batch")
    opts = dict(marker.kwargs) if marker else {}
    node_opts = opts.pop("node", {})
    gw = await start_batch_gateway(tmp_path, batch=opts)
    node, engine = await start_node(gw.ops.port, **node_opts)
    try:
        await until_served(gw)
        yield Env(gw, node, engine)
    finally:
        await node.drain()
        await gw.drain()


async def test_sdk_end_to_end(env: Env, tmp_path: Path) -> None:
    client = env.client()
    lines = [completion(f"req-{i}", f"hello number {i}") for i in range(12)]
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl(lines))
    uploaded = await client.files.create(file=path.open("rb"), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == path.stat().st_size
    assert uploaded.filename == "input.jsonl"
    assert (await client.files.content(uploaded.id)).content == path.read_bytes()
    batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions",
                                        completion_window="24h", metadata={"job": "e2e"})
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"job": "e2e"}
    done = await wait_status(client, batch.id, ("completed", "failed"))
    assert done.status == "completed", done.errors
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (12, 12, 0)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.error_file_id is None and done.output_file_id
    out = parse_lines((await client.files.content(done.output_file_id)).content)
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(12))
    for o in out:
        assert o["error"] is None and o["id"].startswith("batch_req_")
        assert o["response"]["status_code"] == 200
        assert o["response"]["body"]["choices"][0]["text"]
        assert o["response"]["request_id"]
    assert done.usage is not None and done.usage.output_tokens == 12 * 4
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    # Every line went through the proxy's accounting: one request-log row each.
    await env.gw.security.log.flush()
    rows = await env.gw.security.store.requests.recent(limit=100)  # type: ignore[union-attr]
    assert sum(r["route"] == "/v1/completions" and r["status"] == 200 for r in rows) == 12
    listed = await client.batches.list(limit=5)
    assert [b.id for b in listed.data] == [batch.id]
    files = [f.id for f in (await client.files.list()).data]
    assert uploaded.id in files and done.output_file_id in files
    output_file = await client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"
    again = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions",
                                        completion_window="24h")
    assert again.id != batch.id
    # An open batch's input file stays: its lines are read from it.
    with pytest.raises(openai.BadRequestError):
        await client.files.delete(uploaded.id)
    await wait_status(client, again.id, ("completed",))
    # The admin SDK reads the same objects (no auth here: the local caller is admin).
    from inferno.client import AsyncClient

    async with AsyncClient(env.url) as admin:
        assert [b["id"] for b in await admin.batches(limit=5)] == [again.id, batch.id]
        assert (await admin.batch(batch.id))["status"] == "completed"
        with pytest.raises(InvalidRequest):  # a finished batch cannot be cancelled
            await admin.cancel_batch(batch.id)
    deleted = await client.files.delete(uploaded.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_idempotency_key_returns_the_same_batch(env: Env) -> None:
    client = env.client()
    f = await client.files.create(file=("in.jsonl", jsonl([completion("a", "x")])),
                                  purpose="batch")
    args = {"input_file_id": f.id, "endpoint": "/v1/completions", "completion_window": "24h"}
    first = await client.batches.create(**args, extra_headers={"Idempotency-Key": "k1"})
    second = await client.batches.create(**args, extra_headers={"Idempotency-Key": "k1"})
    third = await client.batches.create(**args, extra_headers={"Idempotency-Key": "k2"})
    assert first.id == second.id != third.id


async def test_retries_and_dead_letters(env: Env) -> None:
    client = env.client()
    lines = [completion("ok", "fine"), completion("flaky", "FLAKY2 x"),
             completion("dead", "ALWAYS503"), completion("bad", "BAD400")]
    f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                                        completion_window="24h")
    done = await wait_status(client, batch.id, ("completed",))
    assert env.engine.calls["FLAKY2 x"] == 3  # two 503s, then success
    assert env.engine.calls["ALWAYS503"] == 3  # max_attempts, then the dead letter
    assert env.engine.calls["BAD400"] == 1  # a 400 is not retried
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    assert done.output_file_id and done.error_file_id
    out = parse_lines((await client.files.content(done.output_file_id)).content)
    err = parse_lines((await client.files.content(done.error_file_id)).content)
    assert sorted(o["custom_id"] for o in out) == ["flaky", "ok"]
    statuses = {e["custom_id"]: e["response"]["status_code"] for e in err}
    assert statuses == {"dead": 503, "bad": 400}
    bad = next(e for e in err if e["custom_id"] == "bad")
    assert bad["response"]["body"]["error"]["param"] == "prompt"


async def test_validation_errors_fail_the_batch(env: Env) -> None:
    store = env.gw.security.store
    assert store is not None
    key, _ = await create_key(store, name="limited", models=["fake-model"])
    await env.gw.security.keys.refresh()
    env.gw.security.auth.enabled = True
    client = env.client(key)
    lines: list[dict[str, object] | str] = [
        completion("a", "x"),
        "{not json",
        {**completion("b", "x"), "url": "/v1/embeddings"},
        completion("a", "duplicate"),
        completion("c", "x", stream=True),
        {**completion("d", "x"), "body": {"model": "secret-model", "prompt": "x"}},
        {"method": "POST", "url": "/v1/completions", "body": {"model": "fake-model"}},
    ]
    f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                                        completion_window="24h")
    failed = await wait_status(client, batch.id, ("failed", "completed"))
    assert failed.status == "failed" and failed.failed_at
    assert failed.errors is not None and failed.errors.data is not None
    got = [(e.line, e.code) for e in failed.errors.data]
    assert got == [(2, "invalid_json_line"), (3, "invalid_url"), (4, "duplicate_custom_id"),
                   (5, "stream_not_supported"), (6, "model_not_allowed"),
                   (7, "missing_required_parameter")]
    assert env.engine.calls.total() == 0  # nothing ran
    # Bad create parameters are 400s naming the parameter.
    for kwargs, param in (({"endpoint": "/v1/other"}, "endpoint"),
                          ({"completion_window": "30m"}, "completion_window"),
                          ({"completion_window": "8d"}, "completion_window")):
        args = {"input_file_id": f.id, "endpoint": "/v1/completions",
                "completion_window": "24h", **kwargs}
        with pytest.raises(openai.BadRequestError) as exc:
            await client.batches.create(**args)  # type: ignore[arg-type]
        assert exc.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await client.batches.create(input_file_id="file-nope", endpoint="/v1/completions",
                                    completion_window="24h")


@pytest.mark.batch(workers=2, node={"token_delay": 0.05, "parallel": 2})
async def test_cancel_keeps_finished_lines(env: Env) -> None:
    client = env.client()
    lines = [completion(f"c{i}", f"slow {i}") for i in range(40)]
    f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                                        completion_window="24h")

    async def some_done() -> bool:
        b = await client.batches.retrieve(batch.id)
        return b.request_counts is not None and b.request_counts.completed >= 3
    await eventually(some_done, timeout=20, interval=0.05, what="a few lines done")
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = await wait_status(client, batch.id, ("cancelled",))
    assert done.output_file_id and done.error_file_id
    out = parse_lines((await client.files.content(done.output_file_id)).content)
    err = parse_lines((await client.files.content(done.error_file_id)).content)
    assert len(out) >= 3 and err, "the batch was cancelled part-way"
    assert all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in err)
    ids = [o["custom_id"] for o in out] + [e["custom_id"] for e in err]
    assert sorted(ids) == sorted(f"c{i}" for i in range(40))  # each exactly once
    with pytest.raises(openai.BadRequestError):
        await client.batches.cancel(batch.id)

    # The audit trail has the create, both cancels (one refused), and the node joining.
    store = env.gw.security.store
    assert store is not None

    async def audited() -> list[tuple[str, str, str]]:
        rows = await store.audit.find(action="batch")
        return [(r["action"], r["target"], r["outcome"]) for r in rows] if len(rows) == 3 \
            else []

    assert await eventually(audited, what="batch actions audited") == [
        ("batch.cancel", batch.id, "refused: cancelled"), ("batch.cancel", batch.id, "ok"),
        ("batch.create", batch.id, "ok")]
    nodes = await store.audit.find(action="node")
    assert [r["action"] for r in nodes] == ["node.registered"] and nodes[0]["actor"] == "system"


@pytest.mark.batch(workers=2, node={"token_delay": 0.05, "parallel": 2})
async def test_expiry_keeps_finished_lines(env: Env) -> None:
    client = env.client()
    store = env.gw.security.store
    assert store is not None
    lines = [completion(f"e{i}", f"slow {i}") for i in range(40)]
    f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                                        completion_window="1h")

    async def some_done() -> bool:
        b = await client.batches.retrieve(batch.id)
        return b.request_counts is not None and b.request_counts.completed >= 3
    await eventually(some_done, timeout=20, interval=0.05, what="a few lines done")
    await store.batches.update(batch.id, expires_at=time.time())  # the window runs out now
    done = await wait_status(client, batch.id, ("expired",))
    assert done.expired_at and done.output_file_id and done.error_file_id
    out = parse_lines((await client.files.content(done.output_file_id)).content)
    err = parse_lines((await client.files.content(done.error_file_id)).content)
    assert len(out) >= 3 and err
    assert all(e["error"]["code"] == "batch_expired" for e in err)
    ids = [o["custom_id"] for o in out] + [e["custom_id"] for e in err]
    assert sorted(ids) == sorted(f"e{i}" for i in range(40))


@pytest.mark.batch(files_max_size=64 * 1024)
async def test_files_limits_and_ownership(env: Env) -> None:
    store = env.gw.security.store
    assert store is not None
    alice, _ = await create_key(store, name="alice")
    bob, _ = await create_key(store, name="bob")
    admin, _ = await create_key(store, name="root", scope="admin")
    await env.gw.security.keys.refresh()
    env.gw.security.auth.enabled = True
    a, b, root = env.client(alice), env.client(bob), env.client(admin)
    mine = await a.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        await b.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        await b.files.content(mine.id)
    assert [f.id for f in (await b.files.list()).data] == []
    assert mine.id in [f.id for f in (await root.files.list()).data]
    assert (await root.files.retrieve(mine.id)).id == mine.id
    with pytest.raises(openai.APIStatusError) as too_big:
        await a.files.create(file=("big.jsonl", b"x" * 100_000), purpose="batch")
    assert too_big.value.status_code == 413
    with pytest.raises(openai.AuthenticationError):
        await env.client("inf_000000000000_" + "x" * 43).files.create(
            file=("a.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        await a.files.create(file=("a.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    # Other routes keep the normal body limit.
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{env.url}/completions", content=b"x" * (5 << 20),
                            headers={"authorization": f"Bearer {alice}"})
        assert r.status_code == 413
    # A file listed in pages, oldest first.
    for i in range(3):
        await a.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch")
    page = await a.files.list(limit=2, order="asc")
    assert [f.filename for f in page.data] == ["a.jsonl", "f0.jsonl"] and page.has_more
    rest = await a.files.list(limit=10, order="asc", after=page.data[-1].id)
    assert [f.filename for f in rest.data] == ["f1.jsonl", "f2.jsonl"]


async def test_an_upload_cut_short_leaves_nothing(env: Env) -> None:
    import asyncio

    tmp_dir = env.gw._attached[0].files.tmp  # type: ignore[attr-defined]
    _reader, writer = await asyncio.open_connection("127.0.0.1", env.gw.server.port)
    head = (b"POST /v1/files HTTP/1.1\r\nhost: x\r\n"
            b"content-type: multipart/form-data; boundary=BOUND\r\n"
            b"content-length: 10000000\r\n\r\n"
            b'--BOUND\r\ncontent-disposition: form-data; name="file"; filename="a.jsonl"\r\n'
            b"\r\n" + b"x" * 100_000)
    writer.write(head)
    await writer.drain()
    await eventually(lambda: any(tmp_dir.iterdir()), what="the upload being written")
    writer.close()
    await eventually(lambda: not any(tmp_dir.iterdir()), what="the partial upload removed")


@pytest.mark.batch(workers=2, node={"token_delay": 0.05, "parallel": 2})
async def test_a_stale_validating_row_never_revalidates_a_running_batch(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # A supervisor tick reads the open batches, then acts on each row; a validation that
    # finishes in between leaves the tick a stale "validating" row. Acting on it would
    # discard the items of the running batch, finished ones included.
    client = env.client()
    store = env.gw.security.store
    assert store is not None
    service = next(s for s in env.gw._attached if hasattr(s, "supervisor"))
    lines = [completion(f"s{i}", f"slow {i}") for i in range(30)]
    f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                                        completion_window="24h")

    async def some_done() -> bool:
        return (await store.batch_items.counts(batch.id)).get("done", 0) >= 3
    await eventually(some_done, timeout=20, interval=0.05, what="a few lines done")
    row = await store.batches.get(batch.id)
    assert row is not None and row["status"] == "in_progress"
    stale = {**row, "status": "validating", "lease_owner": None, "lease_expires": None}

    async def stale_rows(*statuses: str) -> list[dict[str, object]]:
        return [stale]
    monkeypatch.setattr(store.batches, "with_status", stale_rows)
    before = await store.batch_items.counts(batch.id)
    await service.supervisor.tick()
    assert batch.id not in service.supervisor._validating, "a second validation started"
    monkeypatch.undo()
    after = await store.batch_items.counts(batch.id)
    assert "new" not in after and after.get("done", 0) >= before["done"], (before, after)
    done = await wait_status(client, batch.id, ("completed",))
    assert done.output_file_id and done.error_file_id is None
    out = parse_lines((await client.files.content(done.output_file_id)).content)
    assert sorted(o["custom_id"] for o in out) == sorted(f"s{i}" for i in range(30))

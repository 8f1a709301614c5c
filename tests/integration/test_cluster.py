"""A real cluster: the proxy and two llama.cpp nodes with SmolLM2, as separate processes,
driven with the official openai client."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.integration.procs import Proc, backend, node_ids, proxy, wait_until

pytest.importorskip("llama_cpp", reason="the llama.cpp engine is not installed")
pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
# This tiny model answers this phrasing correctly at temperature 0 (others can ramble).
PARIS = [{"role": "user", "content": "what is the capital of france?"}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, list[Proc]]]:
    tmp = tmp_path_factory.mktemp("cluster")
    lb = proxy(tmp).start()
    nodes = [backend(tmp, f"node-{i}", lb.ops_port, "--parallel", "4").start() for i in range(2)]
    try:
        wait_until(lambda: node_ids(lb.ops_port) == {"node-0", "node-1"}, 60,
                   "both nodes to register", lb, *nodes)
        yield lb, nodes
    finally:
        for p in [*nodes, lb]:
            p.stop()


def client(lb: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{lb.port}/v1", api_key="unused",
                         max_retries=0, timeout=60)


def aclient(lb: Proc) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{lb.port}/v1", api_key="unused",
                              max_retries=0, timeout=60)


def test_chat_answers_paris(cluster: tuple[Proc, list[Proc]]) -> None:
    resp = client(cluster[0]).chat.completions.create(model=MODEL, messages=PARIS,  # type: ignore[arg-type]
                                                      temperature=0, max_tokens=32)
    assert "Paris" in (resp.choices[0].message.content or "")
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens > 0


def test_chat_streaming(cluster: tuple[Proc, list[Proc]]) -> None:
    stream = client(cluster[0]).chat.completions.create(
        model=MODEL, messages=PARIS, temperature=0, max_tokens=32, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None and usage.completion_tokens > 0


def test_completions_length_and_models(cluster: tuple[Proc, list[Proc]]) -> None:
    c = client(cluster[0])
    resp = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                temperature=0)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True)
        if ch.choices)
    assert streamed == resp.choices[0].text  # greedy: same text either way
    assert MODEL in {m.id for m in c.models.list().data}


def test_eight_concurrent_requests_all_answered(cluster: tuple[Proc, list[Proc]]) -> None:
    lb = cluster[0]

    async def run() -> list[str]:
        c = aclient(lb)

        async def one(i: int) -> str:
            raw = await c.chat.completions.with_raw_response.create(
                model=MODEL, max_tokens=16, temperature=0,
                messages=[{"role": "user", "content": f"Count to {i + 3}."}])
            assert raw.parse().choices[0].message.content
            return raw.headers["x-inferno-backend"]

        return await asyncio.gather(*(one(i) for i in range(8)))

    served = asyncio.run(run())
    assert len(served) == 8
    assert set(served) == {"node-0", "node-1"}  # least-outstanding spreads the burst


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param({"model": MODEL, "prompt": "word " * 3000}, 400, "context_length_exceeded",
                     id="prompt-beyond-context"),
        pytest.param({"model": MODEL, "prompt": "hi", "max_tokens": 5000}, 400,
                     "context_length_exceeded", id="max-tokens-beyond-context"),
        pytest.param({"model": MODEL, "prompt": "hi", "max_tokens": -1}, 400, None,
                     id="negative-max-tokens"),
        pytest.param({"model": "no-such-model", "prompt": "hi"}, 404, "model_not_found",
                     id="unknown-model"),
        pytest.param({"model": MODEL, "prompt": "hi", "temperature": "hot"}, 400, None,
                     id="wrong-type"),
    ],
)
def test_bad_input_through_the_proxy(cluster: tuple[Proc, list[Proc]], body: dict[str, object],
                                     status: int, code: str | None) -> None:
    r = httpx.post(f"http://127.0.0.1:{cluster[0].port}/v1/completions", json=body, timeout=30)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code:
        assert err["code"] == code


def test_node_registers_and_deregisters(cluster: tuple[Proc, list[Proc]],
                                        tmp_path: Path) -> None:
    lb = cluster[0]
    extra = backend(tmp_path, "node-extra", lb.ops_port).start()
    try:
        wait_until(lambda: "node-extra" in node_ids(lb.ops_port), 60, "node-extra to register",
                   lb, extra)
        extra.signal(signal.SIGTERM)
        gone = wait_until(lambda: "node-extra" not in node_ids(lb.ops_port), 5,
                          "node-extra to deregister", lb, extra)
        assert gone < 1.0  # deregistration is immediate, not a lease timeout
        assert extra.wait(30) == 0
    finally:
        extra.stop()


def test_sigterm_drains_in_flight_stream(cluster: tuple[Proc, list[Proc]],
                                         tmp_path: Path) -> None:
    """A node told to stop leaves rotation at once but finishes the stream it is serving."""
    lb = cluster[0]
    node = backend(tmp_path, "node-drain", lb.ops_port, "--served-name", "drain-model").start()
    try:
        wait_until(lambda: "node-drain" in node_ids(lb.ops_port), 60, "node-drain", lb, node)
        stream = client(lb).completions.create(model="drain-model", prompt="Once upon a time",
                                               max_tokens=48, temperature=0, stream=True)
        it = iter(stream)
        first = next(it)
        node.signal(signal.SIGTERM)
        signalled = time.monotonic()
        # No new request reaches the draining node: it was its model's only node, so the
        # proxy itself answers that nobody serves the model any more.
        wait_until(lambda: httpx.post(
            f"http://127.0.0.1:{lb.port}/v1/completions",
            json={"model": "drain-model", "prompt": "x", "max_tokens": 1}).status_code == 404,
            5, "the proxy to stop routing to the draining node", lb, node)
        refused_after = time.monotonic() - signalled
        rest = list(it)
        finishes = [c.choices[0].finish_reason for c in [first, *rest] if c.choices]
        assert finishes[-1] == "length"  # the whole answer arrived
        assert node.wait(30) == 0
        assert refused_after < 1.0
    finally:
        node.stop()


def test_killed_node_fails_over(cluster: tuple[Proc, list[Proc]], tmp_path: Path) -> None:
    lb = cluster[0]
    victim = backend(tmp_path, "node-victim", lb.ops_port, "--lease-seconds", "2").start()
    try:
        wait_until(lambda: "node-victim" in node_ids(lb.ops_port), 60, "node-victim", lb, victim)
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        c = client(lb)
        for _ in range(6):  # some are routed to the dead node first and fail over
            r = c.completions.create(model=MODEL, prompt="Hello", max_tokens=2)
            assert r.choices[0].text is not None
        wait_until(lambda: "node-victim" not in node_ids(lb.ops_port), 10,
                   "the dead node's lease to expire", lb)
    finally:
        victim.stop()


def test_batch_with_the_real_model(cluster: tuple[Proc, list[Proc]]) -> None:
    """The Batch API with the official SDK, unmodified, the lines answered by the model."""
    import json

    c = client(cluster[0])
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "messages": PARIS, "temperature": 0, "max_tokens": 16}}
             for i in range(3)]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    f = c.files.create(file=("paris.jsonl", data), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    wait_until(lambda: c.batches.retrieve(batch.id).status in ("completed", "failed"), 120,
               "the batch to end", cluster[0])
    done = c.batches.retrieve(batch.id)
    assert done.status == "completed", done.errors
    assert done.output_file_id is not None
    out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["q0", "q1", "q2"]
    for o in out:
        assert "Paris" in o["response"]["body"]["choices"][0]["message"]["content"]

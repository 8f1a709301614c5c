"""Helpers for the Batch and Files API tests: a proxy with batch settings, nodes whose
engine fails on chosen prompts, and JSONL inputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import orjson

from inferno.backend.engines.base import Chunk, SamplingParams
from inferno.backend.engines.fake import FakeEngine
from inferno.backend.node import BackendNode
from inferno.core.config import BackendSettings, BatchSettings, ProxySettings
from inferno.core.errors import InvalidRequest, ServiceUnavailable
from inferno.proxy.gateway import Gateway
from inferno.wiring import build_gateway
from tests.polling import eventually


class FlakyEngine(FakeEngine):
    """Prompts containing ``ALWAYS503`` always fail with 503, ``FLAKY<n>`` fail n times
    first, ``BAD400`` fail with 400; ``calls`` counts attempts per prompt."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.calls: Counter[str] = Counter()

    async def generate(self, prompt: str, params: SamplingParams
                       ) -> AsyncGenerator[Chunk, None]:
        self.calls[prompt] += 1
        if "ALWAYS503" in prompt:
            raise ServiceUnavailable("chosen to fail", retry_after=None)
        if "BAD400" in prompt:
            raise InvalidRequest("chosen to be refused", param="prompt")
        if "FLAKY" in prompt:
            n = int(prompt.split("FLAKY", 1)[1][:1])
            if self.calls[prompt] <= n:
                raise ServiceUnavailable("flaky", retry_after=None)
        async for chunk in super().generate(prompt, params):
            yield chunk


async def start_node(gw_ops: int, *, token_delay: float = 0.0, parallel: int = 4,
                     node_id: str = "n1") -> tuple[BackendNode, FlakyEngine]:
    settings = BackendSettings(port=0, ops_port=0, engine="fake", served_name="fake-model",
                               parallel=parallel, n_ctx=256,
                               discovery_lb=f"127.0.0.1:{gw_ops}", node_id=node_id,
                               heartbeat_interval=0.2, lease_seconds=5.0, drain_timeout=2.0)
    engine = FlakyEngine(model_id="fake-model", n_ctx=256, parallel=parallel,
                         token_delay=token_delay)
    node = BackendNode(settings, engine)
    await node.start()
    return node, engine


async def start_batch_gateway(data_dir: Path, batch: dict[str, Any] | None = None,
                              **proxy: Any) -> Gateway:
    settings: dict[str, Any] = {
        "port": 0, "ops_port": 0, "connect_timeout": 0.5, "response_timeout": 10,
        "stream_idle_timeout": 2, "drain_timeout": 2, "default_lease": 1.0,
        "data_dir": data_dir, "keys_refresh_interval": 0.2, "log_flush_interval": 0.05,
        "max_attempts": 1}
    b: dict[str, Any] = {"poll_interval": 0.05, "lease": 2.0, "retry_base": 0.05,
                         "retry_max": 0.2, "max_attempts": 3, "workers": 8}
    gw = build_gateway(ProxySettings(**{**settings, **proxy}),
                       BatchSettings(**{**b, **(batch or {})}))
    await gw.start()
    return gw


async def until_served(gw: Gateway) -> None:
    await eventually(lambda: "fake-model" in gw.pool.snapshot.models, timeout=10,
                     what="the node to register")


def jsonl(lines: list[dict[str, Any] | str]) -> bytes:
    return b"".join((x.encode() if isinstance(x, str) else orjson.dumps(x)) + b"\n"
                    for x in lines)


def completion(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
            "body": {"model": "fake-model", "prompt": prompt, "max_tokens": 4, **body}}


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in data.splitlines() if x.strip()]


async def wait_status(client: Any, batch_id: str, statuses: tuple[str, ...],
                      timeout: float = 30) -> Any:  # noqa: ASYNC109 - a polling deadline
    async def check() -> Any:
        b = await client.batches.retrieve(batch_id)
        return b if b.status in statuses else None
    return await eventually(check, timeout=timeout, interval=0.1,
                            what=f"batch {batch_id} to reach {statuses}")




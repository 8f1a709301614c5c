from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest_asyncio

from inferno.backend.engines.fake import FakeEngine
from inferno.backend.node import BackendNode
from inferno.core.config import BackendSettings, ProxySettings
from inferno.proxy.gateway import Gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_fake_node(*, model: str = "fake-model", token_delay: float = 0.0,
                          parallel: int = 4, n_ctx: int = 256, eos_after: int | None = None,
                          discovery_lb: str | None = None, node_id: str | None = None,
                          lease: float = 5.0) -> BackendNode:
    settings = BackendSettings(port=0, ops_port=0, engine="fake", served_name=model,
                               parallel=parallel, n_ctx=n_ctx, discovery_lb=discovery_lb,
                               node_id=node_id, heartbeat_interval=0.2, lease_seconds=lease,
                               drain_timeout=5.0)
    engine = FakeEngine(model_id=model, n_ctx=n_ctx, parallel=parallel,
                        token_delay=token_delay, eos_after=eos_after)
    node = BackendNode(settings, engine)
    await node.start()
    return node


@pytest_asyncio.fixture
async def fake_node() -> AsyncIterator[BackendNode]:
    node = await start_fake_node()
    yield node
    await node.drain()


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway(ProxySettings(port=0, ops_port=0, connect_timeout=0.5, response_timeout=10,
                               stream_idle_timeout=2, drain_timeout=2, default_lease=1.0))
    await gw.start()
    yield gw
    await gw.drain()

"""A node whose proxy is not up yet joins as soon as it is, not a heartbeat later."""

from __future__ import annotations

from pathlib import Path

from inferno.api.node import Registration
from inferno.backend.registration import RegistrationClient
from inferno.net import HttpClient
from tests.conftest import free_port, start_fake_node, start_gateway
from tests.polling import eventually


async def test_a_failed_registration_is_retried_soon(tmp_path: Path) -> None:
    ops = free_port()
    node = await start_fake_node(node_id="real")  # what the registration points at
    client = HttpClient()
    reg = Registration(id="n1", address=f"127.0.0.1:{node.server.port}",
                       metrics_port=node.ops.port, models=["fake-model"], lease_seconds=120)
    # A 40 s heartbeat: without a quick retry the node would stay out for most of it.
    rc = RegistrationClient(f"127.0.0.1:{ops}", reg, interval=40.0, client=client)
    rc.start()
    gw = None
    try:
        # The proxy is not listening yet: the first registration fails.
        await eventually(lambda: bool(rc._failing), timeout=10, what="a refused registration")
        gw = await start_gateway(tmp_path, ops_port=ops)
        await eventually(lambda: gw is not None and any(n.id == "n1" for n in gw.pool.nodes()),
                         timeout=15,
                         what="the node to register once the proxy is up")
    finally:
        await rc.deregister()
        await client.aclose()
        await node.drain()
        if gw is not None:
            await gw.drain()

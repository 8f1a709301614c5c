"""The local provider with stand-in node processes (tiny Python scripts): crash restarts
back off, max replicas hold, scale-down deregisters at the proxy and then stops."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from inferno.governator.providers.base import NodeTemplate
from inferno.governator.providers.local import LocalProvider, free_port
from inferno.net import HttpClient
from inferno.proxy.gateway import Gateway

CRASH = [sys.executable, "-c", "import sys; sys.exit(3)"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]


def make(gw: Gateway, argv0: list[str], tmp: Path, max_replicas: int = 2) -> LocalProvider:
    return LocalProvider({"m": NodeTemplate(model="m", max_replicas=max_replicas)},
                         proxy_host="127.0.0.1", proxy_port=gw.ops.port, client=HttpClient(),
                         drain_timeout=1.0, argv0=argv0, log_dir=tmp)


async def test_crashing_node_restarts_with_exponential_backoff(gateway: Gateway,
                                                               tmp_path: Path) -> None:
    prov = make(gateway, CRASH, tmp_path)
    assert (await prov.scale("m", 1)) == "started node-0"
    node = prov.nodes[0]
    assert node.proc is not None
    node.proc.wait(10)
    delays = []
    now = 100.0
    for _ in range(4):
        events = await prov.reconcile(now)  # notices the exit
        assert node.state == "restarting"
        delays.append(node.next_start - now)
        assert any("exited with code 3" in e for e in events)
        assert not await prov.reconcile(node.next_start - 0.1)  # not before its time
        now = node.next_start
        events = await prov.reconcile(now)  # restarts it
        assert any("restarted" in e for e in events) and node.proc is not None
        node.proc.wait(10)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert len(prov.nodes) == 1  # restarts reuse the slot, never add nodes
    await prov.close()


async def test_never_exceeds_max_and_drains_on_scale_down(gateway: Gateway,
                                                          tmp_path: Path) -> None:
    prov = make(gateway, SLEEP, tmp_path, max_replicas=2)
    assert (await prov.scale("m", 5)) == "started node-0, node-1"
    assert len(prov.nodes) == 2 and (await prov.scale("m", 5)) == "no change"
    ports = {n.ops_port for n in prov.nodes} | {n.port for n in prov.nodes}
    assert len(ports) == 4  # distinct free ports
    outcome = await prov.scale("m", 1)
    assert outcome == "draining node-1"  # the newest goes first
    victim = next(n for n in prov.nodes if n.id == "node-1")
    assert victim.state == "draining" and victim.proc is not None
    victim.proc.wait(10)  # SIGTERM ended it
    events = await prov.reconcile(1e12)
    assert "node-1 stopped" in events and [n.id for n in prov.nodes] == ["node-0"]
    assert [e.id for e in prov.endpoints()] == ["node-0"]
    await prov.close()
    assert not prov.nodes


def test_a_port_given_to_a_node_is_not_given_again_before_it_binds_it() -> None:
    with socket.socket() as s:  # a port free again at once, as one a node has not bound yet
        s.bind(("127.0.0.1", 0))
        given = int(s.getsockname()[1])
    assert free_port(preferred=given) == given  # the scenario: it is free ...
    assert free_port(preferred=given, taken=frozenset({given})) != given  # ... yet not reused
    assert all(free_port(taken=frozenset({given})) != given for _ in range(50))

"""Alerts evaluated by the proxy: grouping, repeats, resolution, silences; delivered to a
local webhook receiver as Slack-compatible JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from inferno.api.node import Registration
from inferno.net import HttpServer, Request, Response
from inferno.proxy.alerts import AlertManager, Rule
from tests.conftest import start_fake_node, start_gateway
from tests.polling import eventually


class Receiver:
    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = status
        self.server = HttpServer(self.handle)

    async def handle(self, req: Request) -> Response:
        self.bodies.append(orjson.loads(req.body))
        return Response(self.status, b"ok", content_type="text/plain")

    def rules(self) -> list[tuple[str, str]]:
        return [(b["inferno"]["rule"], b["inferno"]["status"]) for b in self.bodies]


def manager(state: dict[str, list[tuple[str, str]]], clock: list[float],
            silences: tuple[str, ...] = ()) -> AlertManager:
    def broken() -> list[tuple[str, str]]:
        raise RuntimeError("bug")

    async def send(url: str, body: dict[str, Any]) -> bool:
        return True

    return AlertManager([Rule("broken", "Broken", broken),
                         Rule("node_ejected", "Node ejected", lambda: state["nodes"]),
                         Rule("budget", "Budget", lambda: state["budget"])],
                        ["http://x"], send, silences=silences, repeat_interval=60,
                        clock=lambda: clock[0])


def test_changes_are_grouped_repeated_resolved_and_silenced() -> None:
    state: dict[str, list[tuple[str, str]]] = {"nodes": [], "budget": []}
    clock = [1000.0]
    am = manager(state, clock, silences=("budget", "node_ejected/canary-*"))
    assert am.evaluate() == []  # the broken rule is skipped, the others evaluated
    state["nodes"] = [("a", "breaker open"), ("b", "failing its health checks"),
                      ("canary-1", "breaker open")]
    state["budget"] = [("proxy", "$12 spent")]
    msgs = am.evaluate()
    assert len(msgs) == 1  # one message for both nodes; the budget and canary are silenced
    body = msgs[0]
    assert body["inferno"]["status"] == "firing"
    assert [a["subject"] for a in body["inferno"]["alerts"]] == ["a", "b"]
    assert body["text"].startswith(":red_circle: [FIRING] Node ejected (2)")
    assert "*a*: breaker open" in body["attachments"][0]["text"]
    assert ("budget", "proxy") in am.active  # silenced, still tracked
    clock[0] += 30
    assert am.evaluate() == []  # still firing, not repeated yet
    clock[0] += 31
    again = am.evaluate()
    assert [a["subject"] for a in again[0]["inferno"]["alerts"]] == ["a", "b"]
    state["nodes"] = [("b", "failing its health checks")]
    state["budget"] = []
    resolved = am.evaluate()
    assert [(m["inferno"]["status"], [a["subject"] for a in m["inferno"]["alerts"]])
            for m in resolved] == [("resolved", ["a"])]  # canary and budget were never sent


async def test_webhook_gets_node_ejected_and_no_healthy_node(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.server.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{receiver.server.port}/hook"
    gw = await start_gateway(tmp_path, alert_webhooks=url, alert_interval=0.05,
                             alert_silences="ttft_slow", health_interval=0.05,
                             unhealthy_after=1, alert_min_requests=1, alert_error_rate=0.5,
                             prices={"fake-model": {"prompt": 1000.0, "completion": 1000.0}},
                             alert_daily_budget_usd=0.001)
    node = await start_fake_node(node_id="n1")
    try:
        gw.pool.upsert(Registration(id="n1", address=f"127.0.0.1:{node.server.port}",
                                    metrics_port=node.ops.port, models=["fake-model"],
                                    lease_seconds=30))
        import httpx2 as httpx

        async with httpx.AsyncClient() as http:
            r = await http.post(f"http://127.0.0.1:{gw.server.port}/v1/completions",
                                json={"model": "fake-model", "prompt": "x", "max_tokens": 3})
            assert r.status_code == 200
        await eventually(lambda: ("spend_budget", "firing") in receiver.rules(),
                         what="the spend budget alert")
        await node.drain()  # the only node dies
        await eventually(lambda: {("node_ejected", "firing"), ("no_healthy_node", "firing")}
                         <= set(receiver.rules()), what="node alerts delivered")
        body = next(b for b in receiver.bodies if b["inferno"]["rule"] == "no_healthy_node")
        assert body["inferno"]["alerts"][0]["subject"] == "fake-model"
        assert isinstance(body["text"], str) and body["attachments"][0]["color"] == "danger"
        kinds = {(e.kind, e.node) for e in gw.events.recent()}
        assert ("alert_firing", "n1") in kinds and ("alert_firing", "fake-model") in kinds
        await eventually(lambda: gw.metrics.alert_notifications.labels("ok")._value.get() >= 3,
                         what="deliveries counted")
        assert all(r != "ttft_slow" for r, _ in receiver.rules())
    finally:
        await node.drain()
        await gw.drain()
        await receiver.server.stop(grace=1)

"""vLLM-named metrics, the Grafana dashboard and alert rules, and the self-healing timeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2 as httpx

from inferno.api.node import Registration
from inferno.proxy.events import EventLog
from inferno.proxy.gateway import Gateway
from inferno.proxy.observe import LiveStats, quantile
from tests.conftest import start_fake_node, start_gateway
from tests.polling import eventually

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_SUFFIX = re.compile(r"_(total|bucket|sum|count|created)$")


def queried_metrics() -> set[str]:
    """Every metric family the Grafana dashboard and the alert rules query."""
    dash = json.loads((DEPLOY / "grafana" / "inferno.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {n for e in exprs for n in re.findall(r"\binferno_[a-z0-9_]+", e)}
    return {_SUFFIX.sub("", n) for n in names}


def families(text: str) -> set[str]:
    return {_SUFFIX.sub("", n) for n in re.findall(r"^# TYPE (\S+) ", text, re.M)}


def add(gw: Gateway, node_id: str, port: int, ops_port: int) -> None:
    gw.pool.upsert(Registration(id=node_id, address=f"127.0.0.1:{port}", metrics_port=ops_port,
                                models=["fake-model"], lease_seconds=30))


async def test_every_metric_the_dashboard_and_rules_query_exists(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path)
    node = await start_fake_node(node_id="n1")
    try:
        add(gw, "n1", node.server.port, node.ops.port)
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{gw.server.port}/v1/chat/completions"
            r = await http.post(url, json={"model": "fake-model", "max_tokens": 5, "stream": True,
                                           "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200 and "[DONE]" in r.text
            await eventually(lambda: gw.stats.summary()["requests"] == 1,
                             what="the request observed")
            proxy = (await http.get(f"http://127.0.0.1:{gw.ops.port}/metrics")).text
            backend = (await http.get(f"http://127.0.0.1:{node.ops.port}/metrics")).text
        wanted = queried_metrics()
        assert len(wanted) >= 15  # the files were read
        missing = wanted - families(proxy) - families(backend)
        assert not missing, f"queried but not exported: {sorted(missing)}"
        # The request reached the vLLM-named histograms on both sides, per model.
        for text in (proxy, backend):
            assert re.search(r'inferno_time_to_first_token_seconds_count\{model="fake-model"\} 1',
                             text)
            assert re.search(r'inferno_e2e_request_latency_seconds_count\{model="fake-model"\} 1',
                             text)
        assert 'inferno_proxy_node_breaker_state{node="n1"} 0.0' in proxy
        assert 'inferno_proxy_model_routable_nodes{model="fake-model"} 1.0' in proxy
        assert "inferno_request_queue_time_seconds_count 1.0" in proxy
        assert "inferno_proxy_requests_total" in proxy  # the existing names still work
    finally:
        await node.drain()
        await gw.drain()


async def test_failover_and_ejection_reach_the_timeline_and_metrics(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, eject_after_failures=1, max_ejected_percent=50)
    good, bad = await start_fake_node(node_id="good"), await start_fake_node(node_id="bad")
    try:
        add(gw, "good", good.server.port, good.ops.port)
        bad_port = bad.server.port
        await bad.drain()  # its port now refuses connections
        add(gw, "bad", bad_port, bad.ops.port)
        kinds = [e.kind for e in gw.events.recent()]
        assert kinds.count("registered") == 2
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{gw.server.port}/v1/completions"
            for _ in range(6):  # the router tries "bad" first at some point
                r = await http.post(url, json={"model": "fake-model", "prompt": "x",
                                               "max_tokens": 2})
                assert r.status_code == 200
                if gw.metrics.failovers._value.get():
                    break
        events = gw.events.recent()
        failover = next(e for e in events if e.kind == "failover")
        assert failover.node == "bad" and "good" in failover.detail
        ejected = next(e for e in events if e.kind == "ejected")
        assert ejected.node == "bad" and "breaker open" in ejected.detail
        assert [e.id for e in events] == sorted(e.id for e in events)
        gw.pool.remove("bad")
        assert gw.events.recent()[-1].kind == "deregistered"
    finally:
        await good.drain()
        await gw.drain()


def test_event_ring_is_bounded_folds_bursts_and_pages() -> None:
    clock = [100.0]
    log = EventLog(size=3, clock=lambda: clock[0])
    for _ in range(5):
        log.emit("failover", "a", "x")  # the same second: one event
    assert [(e.kind, e.count) for e in log.recent()] == [("failover", 5)]
    for i in range(5):
        clock[0] += 2
        log.emit("ejected", f"n{i}")
    assert [e.node for e in log.recent()] == ["n2", "n3", "n4"]
    assert log.last_id == 6
    assert [e.node for e in log.since(5)] == ["n4"]


def test_live_stats_rates_and_percentiles() -> None:
    now = [1_000_000.0]
    stats = LiveStats(clock=lambda: now[0])
    for i in range(100):
        stats.observe({"ts": now[0], "status": 200 if i < 90 else 502, "node": "n",
                       "completion_tokens": 10, "cost": 0.01, "cache_hit": i < 20,
                       "ttft_ms": 100.0 if i < 50 else 1000.0})
    s = stats.summary(60)
    assert s["requests"] == 100
    assert abs(s["error_rate"] - 0.1) < 1e-9
    assert abs(s["cache_hit_rate"] - 0.2) < 1e-9
    assert s["ttft_p50"] is not None and 0.1 <= s["ttft_p50"] < 0.15
    assert s["ttft_p95"] is not None and 1.0 <= s["ttft_p95"] < 1.5
    assert abs(s["cost_per_hour"] - 1.0 * 60) < 1e-6
    strip = stats.node_strip("n")
    assert len(strip) == 60 and strip[-1]["requests"] == 100 and strip[-1]["errors"] == 10
    assert quantile([0] * 24, 0.5) is None

"""Governator pieces: bad files refused with file and field named, signal parsing, the
loop with a failing provider, the state route, and the planner (the stores:
test_governator_store.py)."""

from __future__ import annotations

import asyncio
import json
import math
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from inferno.core.config import GovernatorSettings
from inferno.core.errors import ConfigError, ProviderError
from inferno.governator.cost import choose_node_type, usd_per_1m_tokens
from inferno.governator.loop import Governator
from inferno.governator.planner import load_trace, plan
from inferno.governator.signals import (
    Endpoint,
    histogram_quantile,
    parse_ttft_buckets,
    percentile,
)
from inferno.governator.spec import NodeType, PoolSpec, PriceList, load_prices
from inferno.governator.store import MemoryStore
from inferno.governator.wiring import load_policy_and_prices
from inferno.net import HttpClient
from inferno.proxy.gateway import Gateway
from tests.polling import eventually

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PRICES_OK = "node_types:\n  cpu: {usd_per_hour: 0.1, capacity: 2}\n"


@pytest.mark.parametrize(("prices", "policy", "message"), [
    pytest.param("node_types:\n  cpu: {usd_per_hour: -1}\n", None,
                 "prices.yaml: invalid field 'node_types.cpu.usd_per_hour'", id="negative-price"),
    pytest.param(PRICES_OK, "pools:\n  - {model: m, node_types: [cpu], min_replicas: 3, "
                 "max_replicas: 2}\n", "policy.yaml: invalid field 'pools.0'",
                 id="min-greater-than-max"),
    pytest.param(PRICES_OK, "pools:\n  - {model: m, node_types: [gpu]}\n",
                 "policy.yaml: invalid field 'pools.0.node_types.0': unknown node type 'gpu'",
                 id="unknown-node-type"),
    pytest.param(PRICES_OK, "pools:\n  - {model: m, node_types: [cpu], colour: red}\n",
                 "policy.yaml: invalid field 'pools.0.colour'", id="unknown-field"),
    pytest.param("node_types: [1, 2\n", None, "prices.yaml is not valid YAML", id="bad-yaml"),
])
def test_bad_files_are_refused_naming_file_and_field(tmp_path: Path, prices: str,
                                                     policy: str | None, message: str) -> None:
    (tmp_path / "prices.yaml").write_text(prices)
    settings = GovernatorSettings(prices_file=tmp_path / "prices.yaml")
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(policy)
        settings = settings.model_copy(update={"policy_file": tmp_path / "policy.yaml"})
    with pytest.raises(ConfigError) as err:
        load_policy_and_prices(settings)
    assert message in err.value.message
    assert str(tmp_path) in err.value.message


def test_the_shipped_examples_load() -> None:
    settings = GovernatorSettings(prices_file=EXAMPLES / "prices.yaml",
                                  policy_file=EXAMPLES / "policy.yaml")
    policy, prices = load_policy_and_prices(settings)
    assert policy.pools[0].model == "smollm2-135m"
    assert set(policy.pools[0].node_types) <= set(prices.node_types)


@pytest.mark.parametrize(("types", "measured", "expected"), [
    pytest.param({"a": (1.0, 100.0), "b": (0.5, 100.0)}, {}, "b", id="cheaper-per-hour"),
    pytest.param({"a": (1.0, 1000.0), "b": (0.5, 100.0)}, {}, "a", id="cheaper-per-token"),
    pytest.param({"a": (1.0, 1000.0), "b": (0.5, 100.0)}, {"b": 5000.0}, "b",
                 id="measured-throughput-wins"),
])
def test_cheapest_node_type(types: dict[str, tuple[float, float]], measured: dict[str, float],
                            expected: str) -> None:
    prices = PriceList(node_types={n: NodeType(usd_per_hour=p, tokens_per_second=t, capacity=4)
                                   for n, (p, t) in types.items()})
    spec = PoolSpec(model="m", node_types=list(types))
    choice = choose_node_type(spec, prices, measured)
    assert choice.name == expected and "$" in choice.reason
    assert math.isclose(usd_per_1m_tokens(NodeType(usd_per_hour=3.6, tokens_per_second=1)), 1000)


def test_percentiles_and_ttft_histogram() -> None:
    assert percentile([], 0.95) is None
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    m = "inferno_backend_time_to_first_token_seconds_bucket"
    text = (f'{m}{{endpoint="chat",le="0.1"}} 50.0\n'
            f'{m}{{endpoint="chat",le="1.0"}} 90.0\n'
            f'{m}{{endpoint="chat",le="+Inf"}} 100.0\n'
            f'{m}{{endpoint="completions",le="0.1"}} 0\n')
    buckets = parse_ttft_buckets(text)
    assert buckets == {0.1: 50.0, 1.0: 90.0, math.inf: 100.0}
    assert histogram_quantile(sorted(buckets.items()), 0.5) == pytest.approx(0.1)
    assert histogram_quantile(sorted(buckets.items()), 0.95) == 1.0  # in the +Inf bucket


class FlakyProvider:
    """Fails the first ``failures`` scale calls, then works; counts nodes in memory."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.count = 0

    async def start(self) -> None: ...

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(f"n{i}", "m", "127.0.0.1", 1, "starting") for i in range(self.count)]

    async def reconcile(self, now: float) -> list[str]:
        return []

    async def scale(self, pool: str, desired: int) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ProviderError("cannot start node n0: No such file or directory")
        if self.calls == self.failures + 1 and self.failures > 1:
            raise RuntimeError("a bug in the provider")
        self.count = desired
        return f"now {desired}"

    async def close(self) -> None: ...


async def test_provider_failures_are_outcomes_retried_with_backoff(gateway: Gateway) -> None:
    clock = [1000.0]
    policy, prices = load_policy_and_prices(GovernatorSettings(min_replicas=1))
    provider = FlakyProvider(failures=2)
    gov = Governator(policy, prices, provider, MemoryStore(), HttpClient(),
                     proxy_host="127.0.0.1", proxy_port=gateway.ops.port,
                     clock=lambda: clock[0])
    outcomes = []
    for _ in range(8):
        (decision,) = await gov.tick()
        outcomes.append(decision.outcome)
        clock[0] += 1.0
    assert outcomes[0].startswith("error: cannot start node n0") and "retry in 1s" in outcomes[0]
    assert outcomes[1].startswith("error: cannot start node n0") and "retry in 2s" in outcomes[1]
    assert outcomes[2].startswith("deferred")
    assert outcomes[3].startswith("error: RuntimeError")  # a bug is an outcome too
    assert any(o.startswith("ok: now 1") for o in outcomes[4:])
    assert provider.count == 1
    stored = await gov.store.decisions(20)
    assert len(stored) == 8 and stored[-1]["outcome"].startswith("error")
    await gov._client.aclose()


async def test_state_route_shows_fleet_signals_targets_decisions(gateway: Gateway) -> None:
    policy, prices = load_policy_and_prices(GovernatorSettings(min_replicas=1))
    gov = Governator(policy, prices, FlakyProvider(0), MemoryStore(), HttpClient(),
                     proxy_host="127.0.0.1", proxy_port=gateway.ops.port, interval=0.05)
    port = await gov.start_ops("127.0.0.1", 0)
    await gov.start()
    try:
        await eventually(lambda: gov.last, what="the governator's first decision")

        def get() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/governator/state") as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        state = await asyncio.to_thread(get)
    finally:
        await gov.drain()
    pool = state["pools"][0]
    assert pool["model"] == "smollm2-135m" and pool["node_type"] == "local-cpu"
    assert pool["targets"]["queue_wait_p95_s"] == 2.0 and pool["signals"] is not None
    assert state["decisions"][-1]["action"] == "up"
    assert "min_replicas 1" in state["decisions"][-1]["reason"]


def test_plan_finds_the_cheapest_fleet_for_the_sample_trace() -> None:
    rows = load_trace(EXAMPLES / "trace.csv")
    prices = load_prices(EXAMPLES / "prices.yaml")
    spec = PoolSpec(model="smollm2-135m", node_types=["local-cpu"], max_replicas=4)
    results = {r.name: r for r in plan(rows, prices, spec, max_nodes=4)}
    assert not results["static 1 x local-cpu"].meets  # the burst overwhelms one node
    assert results["static 4 x local-cpu"].meets
    auto = results["autoscaled 1..4 x local-cpu"]
    assert auto.node_hours < results["static 4 x local-cpu"].node_hours
    assert results["api hosted-small"].cost_usd > 0


def test_arrivals_count_requests_the_proxy_holds() -> None:
    """Live signals for the demand sizing: requests reaching nodes per second plus the
    growth of what the proxy holds (its in-flight less its nodes' outstanding)."""
    from inferno.governator.signals import NodeSample, SignalCollector, _held_by_proxy

    def proxy(in_flight: int) -> dict[str, Any]:
        return {"in_flight": in_flight, "nodes": [
            {"models": ["a"], "outstanding": 4}, {"models": ["b"], "outstanding": 2}]}

    assert _held_by_proxy(proxy(6), ["a", "b"]) == {}  # all on nodes
    assert _held_by_proxy(proxy(12), ["a", "b"]) == {"a": 4, "b": 2}  # shared by load
    collector = SignalCollector(HttpClient(), "127.0.0.1", 1)
    node = NodeSample("n1", "a", "ready", in_flight=2, capacity=2, requests_total=10)
    first = collector._pool_signals(100.0, "a", [node], [None], 0.0, held=0)
    busier = NodeSample("n1", "a", "ready", in_flight=2, capacity=2, requests_total=14)
    second = collector._pool_signals(102.0, "a", [busier], [None], 0.0, held=6)
    assert first.queued == 0 and second.queued == 6
    assert second.request_rate == 2.0  # 4 more reached the node in 2 s
    assert second.arrival_rate == 5.0  # and the proxy's hold grew by 6

"""The pieces that make N proxy workers one proxy: the shared-memory rate-limit table and
the merged ops answers (the processes themselves: tests/integration/test_proxy_workers.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inferno.proxy.security.ratelimit import Bucket, LocalLimiter
from inferno.proxy.security.ratelimit_shm import SharedLimiter, create_table
from inferno.proxy.worker import worker_count
from inferno.proxy.workers_merge import merge_metrics, merge_router_state, merge_telemetry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table() -> Iterator[int]:
    fd = create_table()
    yield fd
    os.close(fd)


def test_two_shared_limiters_decide_as_one_local_limiter(table: int) -> None:
    clock = Clock()
    workers = [SharedLimiter(table, clock), SharedLimiter(table, clock)]
    local = LocalLimiter(clock)
    buckets = [Bucket("{k}:r", 0.1, 0.3, 1.0), Bucket("{k}:t", 0.01, 60.0, 20.0)]
    other = [Bucket("{j}:r", 0.1, 0.3, 1.0)]
    decisions = []
    for i in range(400):
        clock.now += 0.013 * (i % 7)
        which = workers[i % 2]
        shared = which.admit_now(buckets if i % 3 else other)
        expected = local.admit_now(buckets if i % 3 else other)
        assert shared == pytest.approx(expected), i
        decisions.append(shared == 0.0)
        if i % 5 == 0:
            which.settle(buckets[1:], -5)
            local.settle(buckets[1:], -5)
    assert 0 < sum(decisions) < len(decisions)  # both admitted and refused requests
    for w in workers:
        w.close()


def test_many_keys_fit_and_expired_slots_are_reused(table: int) -> None:
    clock = Clock()
    lim = SharedLimiter(table, clock)
    for round_ in range(3):
        for k in range(20_000):
            assert lim.admit_now([Bucket(f"key{k}", 1.0, 1.0, 1.0)]) == 0.0
        # Each key's one request filled its window: a second is refused until it drains.
        assert lim.admit_now([Bucket("key7", 1.0, 1.0, 1.0)]) > 0, round_
        clock.now += 5.0
    lim.close()


def _registry(requests: int, running: float, seconds: list[float]) -> str:
    reg = CollectorRegistry()
    Counter("req_total", "Requests", ["route"], registry=reg).labels("/v1/x").inc(requests)
    Gauge("running", "In flight", registry=reg).set(running)
    h = Histogram("lat_seconds", "Latency", buckets=(0.1, 1.0), registry=reg)
    for s in seconds:
        h.observe(s)
    return generate_latest(reg).decode()


def test_metrics_sum_counters_and_histograms_and_label_gauges() -> None:
    text = merge_metrics([(0, _registry(3, 2, [0.05, 0.5])), (1, _registry(4, 5, [2.0]))])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}
    assert samples[("req_total", (("route", "/v1/x"),))] == 7
    assert samples[("running", (("worker", "0"),))] == 2
    assert samples[("running", (("worker", "1"),))] == 5
    assert samples[("lat_seconds_bucket", (("le", "0.1"),))] == 1
    assert samples[("lat_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("lat_seconds_count", ())] == 3
    assert not any(name.endswith("_created") for name, _ in samples)


def test_telemetry_and_router_state_sum_per_node() -> None:
    def vitals(requests: int, node_requests: int) -> dict[str, object]:
        return {"id": "w", "component": "proxy", "state": "ready", "requests_total": requests,
                "in_flight": 1, "nodes": [{"id": "n1", "state": "ready",
                                           "requests": node_requests, "outstanding": 1,
                                           "failures": 0}]}

    one, two = vitals(5, 4), vitals(7, 6)
    one["held"], two["held"] = {"m": 2}, {"m": 1, "k": 4}  # standby models' held requests
    merged = merge_telemetry([one, two], ident="proxy-x", state="ready",
                             who=[(0, 11), (1, 12)])
    assert merged["requests_total"] == 12 and merged["in_flight"] == 2
    assert merged["held"] == {"m": 3, "k": 4} and merged["unserved"] == {}
    assert merged["nodes"] == [{"id": "n1", "state": "ready", "requests": 10,
                                "outstanding": 2, "failures": 0}]
    assert [(w["index"], w["pid"]) for w in merged["workers"]] == [(0, 11), (1, 12)]

    def state(in_flight: int, breaker: str) -> dict[str, object]:
        return {"nodes": [{"id": "n1", "in_flight": in_flight, "requests": 1, "failures": 0,
                           "ejections": 0, "breaker": breaker}],
                "profiles": {"default": {"scorers": [{"name": "load", "calls": 3}]}},
                "admission": {"queued": 1, "rejected": 2}}

    rs = merge_router_state([state(2, "closed"), state(3, "open")], [(0, 11), (1, 12)])
    assert rs["nodes"][0]["in_flight"] == 5 and rs["nodes"][0]["requests"] == 2
    assert rs["admission"] == {"queued": 2, "rejected": 4}
    assert rs["profiles"]["default"]["scorers"][0]["calls"] == 6
    assert [w["nodes"][0]["breaker"] for w in rs["workers"]] == ["closed", "open"]


def test_default_worker_count_follows_the_cpu_quota(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert worker_count(3, tmp_path) == 3  # as configured
    assert worker_count(0, tmp_path) == cores  # no cgroup files: every core
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert worker_count(0, tmp_path) == cores
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one worker
    assert worker_count(0, tmp_path) == 1
    (tmp_path / "cpu.max").unlink()
    v1 = tmp_path / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert worker_count(0, tmp_path) == 1

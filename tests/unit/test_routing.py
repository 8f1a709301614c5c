from __future__ import annotations

import pytest

from inferno.api.node import Registration
from inferno.proxy.pool import Node, Pool
from inferno.proxy.routing import PICKERS, RouteContext, make_picker

CTX = RouteContext(model="m", stream=False)


def node(i: int, outstanding: int = 0, capacity: int = 4, requests: int = 0) -> Node:
    n = Node(id=f"n{i}", host="127.0.0.1", port=9000 + i, ops_port=6100, models=frozenset({"m"}),
             capacity=capacity, source="registered")
    n.outstanding, n.requests = outstanding, requests
    return n


def test_round_robin_rotates_and_lists_every_fallback() -> None:
    nodes = [node(0), node(1), node(2)]
    picker = make_picker("round-robin")
    firsts = [picker.order(nodes, CTX)[0].id for _ in range(6)]
    assert firsts == ["n0", "n1", "n2", "n0", "n1", "n2"]
    assert {n.id for n in picker.order(nodes, CTX)} == {"n0", "n1", "n2"}


@pytest.mark.parametrize(
    ("nodes", "first"),
    [
        pytest.param([node(0, 3), node(1, 1), node(2, 2)], "n1", id="fewest-outstanding"),
        pytest.param([node(0, 2, capacity=8), node(1, 2, capacity=4)], "n0", id="per-capacity"),
        pytest.param([node(0, 0, requests=5), node(1, 0, requests=2)], "n1", id="tie-by-served"),
    ],
)
def test_least_outstanding(nodes: list[Node], first: str) -> None:
    assert make_picker("least-outstanding").order(nodes, CTX)[0].id == first


def test_unknown_policy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'x'"):
        make_picker("x")
    assert set(PICKERS) == {"round-robin", "least-outstanding"}


def reg(node_id: str, port: int = 9000, models: tuple[str, ...] = ("m",),
        lease: float = 5.0, state: str = "ready") -> Registration:
    return Registration.model_validate({"id": node_id, "address": f"127.0.0.1:{port}",
                                        "metrics_port": 6100, "models": list(models),
                                        "lease_seconds": lease, "state": state})


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pool_snapshot_swaps_and_leases_expire() -> None:
    clock = FakeClock()
    pool = Pool(default_lease=5.0, clock=clock)
    before = pool.snapshot
    a = pool.upsert(reg("a"))
    pool.upsert(reg("b", port=9001, models=("m", "other")))
    snap = pool.snapshot
    assert before.nodes == () and snap is not before
    assert [n.id for n in snap.by_model["m"]] == ["a", "b"]
    assert snap.models == {"m", "other"}
    clock.now += 3
    assert pool.upsert(reg("a")) is a  # renewal keeps the node and its live counters
    clock.now += 3
    assert pool.expire() == ["b"]
    assert [n.id for n in pool.snapshot.by_model["m"]] == ["a"]
    assert snap.by_model["m"][1].id == "b"  # old snapshots are never mutated


def test_draining_node_leaves_rotation_but_stays_known() -> None:
    pool = Pool(default_lease=5.0)
    pool.upsert(reg("a"))
    pool.upsert(reg("a", state="draining"))
    assert "m" not in pool.snapshot.by_model
    assert "m" in pool.snapshot.models
    assert pool.remove("a") and not pool.remove("a")

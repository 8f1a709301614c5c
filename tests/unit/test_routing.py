"""Routing plugins, profiles and config: pure functions over nodes, table-driven."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from inferno.api.node import Registration
from inferno.core.config import ProxySettings
from inferno.core.errors import ConfigError
from inferno.core.routing_config import ROUTING_PRESETS, RoutingConfig
from inferno.core.settings import load_settings
from inferno.proxy.pool import Node, Pool
from inferno.proxy.router import Router, prefix_blocks
from inferno.proxy.routing import FILTERS, PICKERS, SCORERS, RouteContext, build_router
from inferno.proxy.routing.profile import Profile

CTX = RouteContext(model="m", stream=False, now=1000.0)


def node(i: int, **kw: object) -> Node:
    n = Node(id=f"n{i}", host="127.0.0.1", port=9000 + i, ops_port=6100,
             models=frozenset({"m"}), capacity=int(kw.pop("capacity", 4)),  # type: ignore[call-overload]
             source="registered")
    for k, v in kw.items():
        setattr(n, k, v)
    return n


@pytest.mark.parametrize(
    ("scorer", "nodes", "best"),
    [
        pytest.param("least-outstanding", [node(0, outstanding=3), node(1, outstanding=1)],
                     "n1", id="least-outstanding"),
        pytest.param("least-outstanding", [node(0, outstanding=4, capacity=8),
                                           node(1, outstanding=3, capacity=4)],
                     "n0", id="least-outstanding-per-capacity"),
        pytest.param("queue-depth", [node(0, queue_depth=5), node(1, queue_depth=0)], "n1",
                     id="queue-depth"),
        pytest.param("latency", [node(0, ewma_ttft=0.2), node(1, ewma_ttft=0.05)], "n1",
                     id="latency"),
        pytest.param("cost", [node(0, price_per_mtok=2.0), node(1, price_per_mtok=0.5)], "n1",
                     id="cost-per-token"),
        pytest.param("cost", [node(0, price_per_hour=1.0), node(1)], "n1", id="free-is-best"),
        pytest.param("model-loaded", [node(0, available=frozenset({"m"})),
                                      node(1, loaded=frozenset({"m"}))], "n1",
                     id="model-loaded"),
    ],
)
def test_scorers_prefer_the_right_node(scorer: str, nodes: list[Node], best: str) -> None:
    scores = SCORERS[scorer]().score(nodes, CTX)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert nodes[scores.index(max(scores))].id == best


def test_unmeasured_latency_scores_like_the_best() -> None:
    scores = SCORERS["latency"]().score([node(0, ewma_ttft=0.1), node(1)], CTX)
    assert scores == [1.0, 1.0]


def test_session_affinity_is_stable_and_spreads() -> None:
    nodes = [node(i) for i in range(4)]
    scorer = SCORERS["session-affinity"]()
    homes = Counter()
    for s in range(200):
        ctx = RouteContext(model="m", stream=False, session=f"user-{s}")
        first = scorer.score(nodes, ctx)
        assert scorer.score(nodes, ctx) == first and sum(first) == 1.0
        homes[first.index(1.0)] += 1
    assert len(homes) == 4 and min(homes.values()) > 20
    assert scorer.score(nodes, CTX) == [0.0] * 4  # no session, no opinion


def test_prefix_affinity_follows_the_node_that_served_the_prefix() -> None:
    nodes = [node(i) for i in range(3)]
    scorer = SCORERS["prefix-affinity"]()
    system = "You are a helpful assistant. " * 20
    a = {"messages": [{"role": "system", "content": system},
                      {"role": "user", "content": "first question"}]}
    b = {"messages": [{"role": "system", "content": system},
                      {"role": "user", "content": "another one"}]}
    ctx_a = RouteContext(model="m", stream=False, prefix_blocks=prefix_blocks(a))
    ctx_b = RouteContext(model="m", stream=False, prefix_blocks=prefix_blocks(b))
    seeded = scorer.score(nodes, ctx_a)
    assert sorted(seeded) == [0.0, 0.0, 0.5]  # nobody has it yet: one consistent seed
    scorer.observe(nodes[2], ctx_a)  # type: ignore[attr-defined]
    scores = scorer.score(nodes, ctx_b)
    assert scores.index(max(scores)) == 2 and scores[2] > 0.5


def test_prefix_blocks_share_leading_hashes() -> None:
    long = "x" * 300
    a, b = prefix_blocks({"prompt": long + "AAA" * 100}), prefix_blocks({"prompt": long + "B"})
    assert a[:2] == b[:2] and len(b) == 2
    assert prefix_blocks({"prompt": "short"}) == ()


@pytest.mark.parametrize("picker", sorted(PICKERS))
def test_pickers_return_every_candidate_once(picker: str) -> None:
    nodes = [node(i) for i in range(4)]
    order = PICKERS[picker]().order(nodes, [0.1, 0.9, 0.5, 0.3], CTX)
    assert sorted(n.id for n in order) == ["n0", "n1", "n2", "n3"]


def test_max_score_rotates_ties_and_respects_scores() -> None:
    picker = PICKERS["max-score"]()
    nodes = [node(i) for i in range(3)]
    firsts = {picker.order(nodes, [1.0, 1.0, 1.0], CTX)[0].id for _ in range(6)}
    assert firsts == {"n0", "n1", "n2"}
    assert [n.id for n in picker.order(nodes, [0.2, 0.9, 0.5], CTX)] == ["n1", "n2", "n0"]


def test_weighted_random_favours_high_scores() -> None:
    picker = PICKERS["weighted-random"](seed=7)
    nodes = [node(0), node(1)]
    wins = Counter(picker.order(nodes, [0.1, 0.9], CTX)[0].id for _ in range(500))
    assert wins["n1"] > 400


def test_round_robin_rotates() -> None:
    picker = PICKERS["round-robin"]()
    nodes = [node(i) for i in range(3)]
    assert [picker.order(nodes, [0, 0, 0], CTX)[0].id for _ in range(4)] == [
        "n0", "n1", "n2", "n0"]


class _Wild:
    name = "wild"

    def score(self, nodes: list[Node], ctx: RouteContext) -> list[float]:
        return [50.0, float("nan"), -3.0][: len(nodes)]


def test_profile_clamps_weights_and_times_scorers() -> None:
    profile = Profile("p", filters=[], scorers=[(_Wild(), 2.0)], picker=PICKERS["max-score"]())
    decision = profile.route([node(0), node(1), node(2)], CTX)
    assert decision.order[0].id == "n0"
    assert "n0=2.00" in decision.explain and profile.stats["wild"].calls == 1


class _Seen:
    def __init__(self) -> None:
        self.nodes: list[str] = []

    def observe(self, node: Node, ctx: RouteContext) -> None:
        self.nodes.append(node.id)


def test_one_candidate_is_not_ranked_but_observed() -> None:
    seen = _Seen()
    profile = Profile("p", filters=[FILTERS["not-draining"]()], scorers=[(_Wild(), 2.0)],
                      picker=PICKERS["max-score"](), observers=[seen])
    draining = node(1)
    draining.state = "draining"
    decision = profile.route([node(0), draining], CTX)
    assert [n.id for n in decision.order] == ["n0"]
    assert decision.explain == "p max-score n0"
    assert profile.stats["wild"].calls == 0 and seen.nodes == ["n0"]


def test_health_filter_and_panic_mode() -> None:
    profile = Profile("p", filters=[FILTERS["not-draining"](), FILTERS["healthy"]()],
                      scorers=[], picker=PICKERS["max-score"]())
    sick, ok = node(0, healthy=False), node(1)
    assert [n.id for n in profile.route([sick, ok], CTX).order] == ["n1"]
    both_sick = profile.route([sick, node(2, healthy=False)], CTX)
    assert both_sick.panic and len(both_sick.order) == 2  # try them rather than refuse
    draining = node(3, state="draining")
    assert profile.route([draining], CTX).order == []  # never routed, even in panic


def test_build_router_from_yaml_shape() -> None:
    config = RoutingConfig.model_validate({
        "plugins": [{"type": "least-outstanding", "name": "lo"},
                    {"type": "prefix-affinity", "name": "px", "params": {"capacity": 10}}],
        "profiles": {"main": {"scorers": [{"ref": "lo", "weight": 1}, {"ref": "px", "weight": 2}],
                              "picker": "weighted-random"},
                     "cheap": {"scorers": [{"ref": "cost"}]}},
        "default_profile": "main",
        "model_profiles": {"m": "cheap"},
    })
    profiles = build_router(config)
    assert profiles["main"].needs_prefix and not profiles["cheap"].needs_prefix
    assert [s.name for s, _ in profiles["main"].scorers] == ["least-outstanding",
                                                             "prefix-affinity"]
    router = Router(config, profiles)
    assert router.profile_for("m", None).name == "cheap"
    assert router.profile_for("x", None).name == "main"
    assert router.profile_for("m", "main").name == "main"  # x-inferno-profile header


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        pytest.param({"plugins": [{"type": "nope", "name": "x"}], "profiles": {"p": {}},
                      "default_profile": "p"}, "unknown type 'nope'", id="unknown-type"),
        pytest.param({"profiles": {"p": {"scorers": [{"ref": "ghost"}]}},
                      "default_profile": "p"}, "no scorer named 'ghost'", id="dangling-ref"),
        pytest.param({"plugins": [{"type": "least-outstanding", "name": "lo"}],
                      "profiles": {"p": {"picker": "lo"}},
                      "default_profile": "p"}, "is a scorer, not a picker", id="wrong-kind"),
        pytest.param({"profiles": {"p": {}}, "default_profile": "q"}, "'q' is not defined",
                     id="no-default"),
        pytest.param({"plugins": [{"type": "prefix-affinity", "name": "x",
                                   "params": {"bogus": object()}}],
                      "profiles": {"p": {}}, "default_profile": "p"}, None, id="ok-extra-params"),
    ],
)
def test_router_config_errors(config: dict[str, object], needle: str | None) -> None:
    cfg = RoutingConfig.model_validate(config)
    if needle is None:
        build_router(cfg)
        return
    with pytest.raises(ConfigError, match=needle):
        build_router(cfg)


def test_the_default_preset_sends_a_loaded_node_its_requests_despite_its_load() -> None:
    profile = build_router(ROUTING_PRESETS["least-outstanding"])["least-outstanding"]
    cold = node(0, available=frozenset({"m"}))  # would load the model first: seconds
    busy = node(1, loaded=frozenset({"m"}), outstanding=3)
    static = node(2, outstanding=3)  # reports no load state: counts as loaded
    for _ in range(20):
        assert profile.route([cold, busy], CTX).order[0] is busy
    assert SCORERS["model-loaded"]().score([static, cold], CTX) == [1.0, 0.0]


def test_presets_build_and_unknown_preset_is_named() -> None:
    for cfg in ROUTING_PRESETS.values():
        build_router(cfg)
    with pytest.raises(ConfigError, match="unknown routing preset 'fastest'"):
        load_settings(ProxySettings, cli={"routing": "fastest"})


def test_canary_split_is_close_to_its_weights() -> None:
    config = RoutingConfig.model_validate({
        "profiles": {"p": {}}, "default_profile": "p",
        "canary": {"chat": {"chat-v1": 90, "chat-v2": 10}}})
    router = Router(config, build_router(config), rng=random.Random(1))
    picks = Counter(router.target_model("chat") for _ in range(5000))
    assert 0.87 < picks["chat-v1"] / 5000 < 0.93
    assert router.target_model("other") == "other"


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
    assert pool.upsert(reg("a")) is a  # renewal keeps the node and its live state
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


def test_latency_jitter_below_the_floor_is_a_tie() -> None:
    nodes = [node(0, ewma_ttft=0.0010), node(1, ewma_ttft=0.0013)]
    profile = Profile("p", filters=[], scorers=[(SCORERS["latency"](), 1.0)],
                      picker=PICKERS["max-score"]())
    firsts = {profile.route(nodes, CTX).order[0].id for _ in range(4)}
    assert firsts == {"n0", "n1"}  # both get traffic
    slow = SCORERS["latency"]().score([node(0, ewma_ttft=0.1), node(1, ewma_ttft=1.0)], CTX)
    assert slow[0] == 1.0 and slow[1] < 0.2

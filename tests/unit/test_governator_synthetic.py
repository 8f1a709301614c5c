"""Synthetic traces: each named shape has its shape, the same seed gives the same rows,
and the planner's autoscaled fleet on every shape (``governator plan --synthetic``)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferno.cli import app
from inferno.core.errors import ConfigError
from inferno.governator.planner import TraceRow, minute_attainment, simulate
from inferno.governator.spec import PoolSpec, load_policy, load_prices
from inferno.governator.synthetic import (
    BASE_RPS,
    MODEL,
    NAMES,
    SECOND_MODEL,
    synthetic_trace,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def per_minute(rows: list[TraceRow], model: str = MODEL) -> list[int]:
    counts = [0] * (int(max(r.ts for r in rows) // 60) + 1)
    for r in rows:
        if r.model == model:
            counts[int(r.ts // 60)] += 1
    return counts


@pytest.mark.parametrize("shape", NAMES)
def test_same_seed_same_rows_other_seed_other_rows(shape: str) -> None:
    a = synthetic_trace(shape, seed=3, duration_s=600)
    assert a == synthetic_trace(shape, seed=3, duration_s=600)
    assert a != synthetic_trace(shape, seed=4, duration_s=600)
    assert all(0 <= r.ts < 600 for r in a)
    assert [r.ts for r in a] == sorted(r.ts for r in a)


def test_steps_rise_from_a_quiet_base_at_once() -> None:
    rows = synthetic_trace("steps", seed=1, duration_s=1800)
    seconds = [0] * 1800
    for r in rows:
        seconds[int(r.ts)] += 1
    ten_s = [sum(seconds[i:i + 10]) / 10 for i in range(0, 1800, 10)]
    quiet = sorted(ten_s)[len(ten_s) // 2]
    assert quiet <= 2 * BASE_RPS  # most of the time: the base
    assert max(ten_s) >= 10 * BASE_RPS  # bursts of 14-18x
    # A step: some 10 s window is >= 6x the one just before it.
    assert any(b >= 6 * max(a, BASE_RPS) for a, b in itertools.pairwise(ten_s))


def test_ramps_rise_gradually() -> None:
    rows = synthetic_trace("ramps", seed=2, duration_s=1800)
    windows = [0] * 90  # 20 s each
    for r in rows:
        windows[int(r.ts // 20)] += 1
    peak = windows.index(max(windows))
    assert max(windows) >= 15 * BASE_RPS * 20
    # From the last window near the base to the first near the peak: a minute or more
    # (a step takes one window).
    low = max(i for i in range(peak) if windows[i] <= 3 * BASE_RPS * 20)
    high = next(i for i in range(low, peak + 1) if windows[i] >= 0.6 * max(windows))
    assert (high - low) * 20 >= 60


def test_diurnal_has_a_quiet_night_and_two_peaks() -> None:
    counts = per_minute(synthetic_trace("diurnal", seed=0, duration_s=1800))
    first, second = counts[: len(counts) // 2], counts[len(counts) // 2:]
    assert max(first) >= 10 * min(first[:3]) and max(second) >= 10 * min(second[-3:])
    assert counts[0] <= 3 * BASE_RPS * 60 and counts[-1] <= 3 * BASE_RPS * 60


def test_heavy_tail_lengths() -> None:
    rows = synthetic_trace("heavy-tail", seed=0, duration_s=1800)
    lengths = sorted(r.completion_tokens for r in rows)
    median, top = lengths[len(lengths) // 2], lengths[-1]
    assert top >= 10 * median  # a few answers far longer than the typical one
    plain = sorted(r.completion_tokens for r in synthetic_trace("diurnal", 0, 1800))
    assert top > plain[-1]


def test_two_models_at_once() -> None:
    rows = synthetic_trace("two-models", seed=0, duration_s=1800)
    a, b = per_minute(rows, MODEL), per_minute(rows, SECOND_MODEL)
    assert sum(a) > 100 and sum(b) > 100
    # Each model's busiest minute differs from the other's (two independent shapes).
    assert a.index(max(a)) != b.index(max(b))


@pytest.mark.parametrize(("shape", "duration", "message"), [
    ("sawtooth", 1800, "unknown synthetic shape 'sawtooth'"),
    ("steps", 60, "at least 300 s"),
])
def test_bad_arguments_are_refused(shape: str, duration: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        synthetic_trace(shape, 0, duration)


def pool(model: str) -> PoolSpec:
    prices_path = EXAMPLES / "prices.yaml"
    example = load_policy(EXAMPLES / "policy.yaml", load_prices(prices_path),
                          prices_path).pools[0]
    return example.model_copy(update={"model": model, "node_types": ["local-cpu"],
                                      "min_replicas": 1, "max_replicas": 8})


def judge(rows: list[TraceRow], spec: PoolSpec) -> tuple[float, float, int, int]:
    """(autoscaled attainment, its node-hours / the smallest static fleet's meeting the
    SLO, autoscaled peak nodes, that static fleet's size): what ``plan`` reports, with
    only the static fleets up to the first that meets the SLO simulated."""
    nt = load_prices(EXAMPLES / "prices.yaml").node_types["local-cpu"]
    target = spec.targets.queue_wait_p95_s
    rows = [r for r in rows if r.model == spec.model]
    arrivals, waits, auto_s, peak = simulate(rows, nt, target, spec=spec, type_name="cpu")
    for n in range(1, 9):
        a, w, static_s, _ = simulate(rows, nt, target, nodes=n)
        if minute_attainment(a, w, target) >= 0.95:
            return minute_attainment(arrivals, waits, target), auto_s / static_s, peak, n
    raise AssertionError("no static fleet of up to 8 nodes meets the SLO")


@pytest.mark.parametrize("shape", NAMES)
def test_autoscaler_on_every_shape(shape: str) -> None:
    """Every shape, two seeds, the full 30 minutes: the autoscaled fleet (min 1 node)
    against the smallest static fleet meeting the SLO. The bar here is what the policy
    reaches on every row (bench/autoscale_shapes.py prints the table against the
    stricter goal of >= 95 % of minutes at <= 60 % of the node-hours)."""
    for seed in (0, 1):
        rows = synthetic_trace(shape, seed, 1800)
        for model in dict.fromkeys(r.model for r in rows):
            attainment, ratio, peak, static_nodes = judge(rows, pool(model))
            where = f"{shape} seed {seed} {model}: {attainment:.0%} at {ratio:.0%}"
            # The scenario happened: the peaks needed several nodes, the base one.
            assert peak >= 3 and static_nodes >= 3, where
            assert attainment >= 0.9, where
            assert ratio <= 0.7, where


def test_another_decider_drives_the_simulated_fleet() -> None:
    """``simulate(decider=...)`` replays a policy other than ``decide`` (the bench's
    oracles use it): a decider that wants 1 node before 60 s and 3 after gets exactly
    that fleet, its new nodes paying the node type's start-up."""
    from inferno.governator.policy import Decision, PoolState
    from inferno.governator.signals import PoolSignals

    nt = load_prices(EXAMPLES / "prices.yaml").node_types["local-cpu"]
    spec = pool(MODEL)
    rows = [TraceRow(float(t), MODEL, 10, 20) for t in range(0, 120, 4)]
    seen: list[tuple[float, int, int]] = []

    def three_after_a_minute(spec: PoolSpec, name: str, _nt: object, sig: PoolSignals,
                             state: PoolState) -> tuple[Decision, PoolState]:
        seen.append((sig.at, sig.ready, sig.starting))
        want = 1 if sig.at < 60 else 3
        return Decision(pool=spec.name, at=sig.at, current=sig.running, desired=want,
                        action="hold", reason="test", node_type=name), state

    _, waits, node_s, peak = simulate(rows, nt, 2.0, spec=spec, type_name="local-cpu",
                                      decider=three_after_a_minute)
    assert seen and peak == 3
    # The two new nodes were starting for start-up seconds, then ready.
    assert any(at >= 60 and starting == 2 for at, _, starting in seen)
    assert any(at >= 60 + nt.startup_s and ready == 3 for at, ready, _ in seen)
    end = rows[-1].ts
    assert node_s >= end + 2 * (end - 61)  # 1 node all along, 2 more from ~60 s
    assert all(w == w for w in waits)  # every request was served


def test_cli_synthetic_json_rows() -> None:
    result = CliRunner().invoke(app, [
        "governator", "plan", "--synthetic", "two-models", "--seed", "1", "--duration", "300",
        "--prices", str(EXAMPLES / "prices.yaml"), "--max-nodes", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert {r["pool"] for r in rows} == {MODEL, SECOND_MODEL}  # one pool per model
    assert {"fleet", "attainment", "node_hours", "cost_usd", "meets"} <= set(rows[0])
    assert any(r["fleet"].startswith("autoscaled ") for r in rows)
    assert sum(r["cheapest_meeting"] for r in rows) <= 2


def test_cli_needs_exactly_one_trace_source() -> None:
    result = CliRunner().invoke(app, ["governator", "plan", "--prices",
                                      str(EXAMPLES / "prices.yaml")])
    assert result.exit_code == 2
    assert "exactly one of --trace FILE or --synthetic SHAPE" in result.output

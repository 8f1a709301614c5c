"""plan_prefill: which prompts one decode step prefills (pure, table-driven)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from inferno.backend.engines._prefill import plan_prefill


@dataclass(frozen=True)
class Case:
    name: str
    remaining: list[int]
    expected: list[tuple[int, int]]
    skipped: list[int] | None = None
    chunk: int = 63
    group: int = 32


CASES = [
    Case("nothing to prefill", [], []),
    Case("one short prompt, whole", [20], [(0, 20)]),
    Case("shortest first, one per step when two do not fit the group", [22, 18, 25], [(1, 18)]),
    Case("short prompts grouped up to the group size", [10, 12, 9, 30], [(2, 9), (0, 10), (1, 12)]),
    Case("ties keep arrival order", [7, 7, 7, 7, 7], [(0, 7), (1, 7), (2, 7), (3, 7)]),
    Case("a long prompt alone: one chunk", [500], [(0, 63)]),
    Case("a partial chunk leaves no room for others", [100, 80], [(1, 63)]),
    Case("a first pick bigger than the group still takes only itself", [40, 45, 50], [(0, 40)]),
    Case("a long prompt behind short ones waits", [300, 10], [(1, 10)]),
    Case("a prompt passed over too often goes first", [300, 10], [(0, 63)], skipped=[8, 0]),
    Case(
        "aged prompts among themselves: shortest first",
        [300, 10, 200],
        [(2, 63)],
        skipped=[9, 0, 8],
    ),
    Case("the chunk is what the batch has room for", [40], [(0, 16)], chunk=16),
    Case("group 0: one prompt per step", [3, 4, 5], [(0, 3)], group=0),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan_prefill(case: Case) -> None:
    skipped = case.skipped or [0] * len(case.remaining)
    plan = plan_prefill(case.remaining, skipped, chunk=case.chunk, group=case.group)
    assert plan == case.expected


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        pytest.param([1], [(0, 1)], id="one-token"),
        pytest.param([63, 64, 65], [(0, 63)], id="a-full-chunk-fills-the-step"),
        pytest.param([5, 500, 2, 70], [(2, 2), (0, 5)], id="short-ones-grouped"),
    ],
)
def test_never_takes_more_than_remaining_or_chunk(
    remaining: list[int], expected: list[tuple[int, int]]
) -> None:
    plan = plan_prefill(remaining, [0] * len(remaining), chunk=63, group=32)
    assert plan == expected  # not empty: a step with prompts waiting always prefills one
    for index, take in plan:
        assert 0 < take <= min(remaining[index], 63)


def test_any_waiting_prompt_gets_a_plan_within_bounds() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        n = rng.randint(1, 8)
        remaining = [rng.randint(1, 300) for _ in range(n)]
        skipped = [rng.randint(0, 10) for _ in range(n)]
        chunk, group = rng.randint(1, 100), rng.randint(0, 64)
        plan = plan_prefill(remaining, skipped, chunk=chunk, group=group)
        assert plan, (remaining, skipped, chunk, group)
        indices = [i for i, _ in plan]
        assert len(set(indices)) == len(indices)  # a prompt at most once per step
        first, take = plan[0]
        assert take == min(remaining[first], chunk)
        assert all(t == remaining[i] for i, t in plan[1:])  # later picks: whole prompts
        assert sum(t for _, t in plan) <= max(group, take)

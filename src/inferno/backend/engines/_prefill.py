"""Which prompts one decode step prefills, and how much of each: a pure function.

Prefill on a CPU is compute-bound: a step costs a small fixed amount plus about the
same per prompt token whatever the mix, so the order in which a burst of prompts is
prefilled decides their times to first token, not the total. Shortest remaining
prompt first, whole, is what minimises them: 8 prompts of 18 tokens done one after
another give first tokens at 1, 2, ... 8 units, where spreading every step over all
of them (FIFO chunks) gives everyone ~6-8. Grouping a few short prompts in a step
saves only the fixed cost, so a step takes further whole prompts only while it stays
small (``group`` tokens). A prompt longer than ``chunk`` is prefilled ``chunk`` tokens
per step (chunked prefill), and a prompt passed over ``max_skips`` times goes first,
so a long prompt cannot starve behind a stream of short ones.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_prefill(
    remaining: Sequence[int],
    skipped: Sequence[int],
    *,
    chunk: int,
    group: int,
    max_skips: int = 8,
) -> list[tuple[int, int]]:
    """``(index, tokens)`` to prefill this step, in the order given to the batch.

    ``remaining[i]`` is prompt ``i``'s tokens still to prefill (> 0) and ``skipped[i]``
    how many steps it has been passed over; indices are in arrival order, which breaks
    ties. The first pick gets up to ``chunk`` tokens; later picks only whole prompts,
    while the step's prompt tokens stay within ``max(group, first pick)``.
    """
    if not remaining:
        return []
    order = sorted(
        range(len(remaining)),
        key=lambda i: (skipped[i] < max_skips, remaining[i], i),
    )
    first = order[0]
    take = min(remaining[first], chunk)
    plan = [(first, take)]
    total, cap = take, max(group, take)
    if take == remaining[first]:  # a partly prefilled prompt leaves no room for others
        for i in order[1:]:
            if total + remaining[i] <= cap:
                plan.append((i, remaining[i]))
                total += remaining[i]
    return plan

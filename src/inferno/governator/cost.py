"""The cost model: $/hour per node type and throughput give $/1M tokens.

Throughput is the price list's hint until the governator has measured it: the best
completion tokens/s one node of the type sustained while busy (kept per node type).
"""

from __future__ import annotations

from dataclasses import dataclass

from inferno.governator.spec import ApiModel, NodeType, PoolSpec, PriceList


def usd_per_1m_tokens(node_type: NodeType, measured_tps: float | None = None) -> float:
    tps = measured_tps if measured_tps and measured_tps > 0 else node_type.tokens_per_second
    return node_type.usd_per_hour / (tps * 3600.0) * 1e6


def api_usd(model: ApiModel, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * model.usd_per_1m_prompt
            + completion_tokens * model.usd_per_1m_completion) / 1e6


@dataclass(frozen=True, slots=True)
class Choice:
    name: str
    node_type: NodeType
    usd_per_1m: float
    reason: str


def choose_node_type(spec: PoolSpec, prices: PriceList,
                     measured: dict[str, float] | None = None) -> Choice:
    """The cheapest node type per token among the pool's candidates that meet its targets.

    A type meets the targets when one node can carry ``in_flight_per_node`` requests
    (its capacity) and, for a pool allowed to scale to zero, starts within the warm-up
    budget. If none qualifies the cheapest candidate is used, and the reason says so.
    """
    measured = measured or {}
    priced = sorted((usd_per_1m_tokens(prices.node_types[n], measured.get(n)), n)
                    for n in spec.node_types)
    per_node = spec.targets.in_flight_per_node
    for cost, name in priced:
        nt = prices.node_types[name]
        if per_node is not None and nt.capacity < per_node:
            continue
        if spec.min_replicas == 0 and nt.startup_s > spec.warmup_budget_s:
            continue
        others = len(priced) - 1
        why = (f"{name}: ${cost:.3f}/1M tokens, cheapest of {others + 1} meeting the targets"
               if others else f"{name}: ${cost:.3f}/1M tokens")
        return Choice(name, nt, cost, why)
    cost, name = priced[0]
    return Choice(name, prices.node_types[name], cost,
                  f"{name}: ${cost:.3f}/1M tokens (no candidate meets every target; cheapest)")

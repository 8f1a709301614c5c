"""The price list and the scale policy: YAML files validated with pydantic.

A bad value is refused at start with the file and the field named, e.g.
``policy.yaml: pools.0.min_replicas: min_replicas (3) > max_replicas (2)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inferno.core.errors import ConfigError
from inferno.core.settings import load_yaml
from inferno.core.validation import field_errors

NonNeg = Annotated[float, Field(ge=0)]
Pos = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeType(_Strict):
    usd_per_hour: NonNeg
    # Sequences one node generates at once (its `parallel`).
    capacity: Annotated[int, Field(ge=1, le=4096)] = 1
    startup_s: NonNeg = 10.0
    # Hints until measured: completion tokens/s per node at full capacity, and prefill speed.
    tokens_per_second: Pos = 50.0
    prefill_tokens_per_second: Pos = 2000.0
    # The accelerator a node of this type has, if any: which GPU and how many (shown in
    # /governator/state; such nodes run a GPU build, make setup GPU=..., with --gpu-layers).
    gpu: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    gpus: Annotated[int, Field(ge=0, le=64)] = 0


class ApiModel(_Strict):
    """A cloud API model, priced per token (a fleet of zero nodes that never queues)."""

    usd_per_1m_prompt: NonNeg
    usd_per_1m_completion: NonNeg
    ttft_s: NonNeg = 0.5


class PriceList(_Strict):
    node_types: dict[str, NodeType] = Field(min_length=1)
    api_models: dict[str, ApiModel] = {}


class Targets(_Strict):
    queue_wait_p95_s: Pos = 2.0
    ttft_p95_s: Pos = 5.0
    # Requests (running + queued) one node should carry; defaults to the node's capacity.
    in_flight_per_node: Pos | None = None


class PoolSpec(_Strict):
    model: Annotated[str, Field(min_length=1)]
    # Candidate node types; the cheapest per token that meets the targets is preferred.
    node_types: list[str] = Field(min_length=1)
    min_replicas: Annotated[int, Field(ge=0, le=256)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=256)] = 4
    targets: Targets = Targets()
    # min_replicas 0 is honoured only when a node starts within the warm-up budget.
    warmup_budget_s: NonNeg = 30.0
    idle_before_zero_s: NonNeg = 300.0
    stable_window_s: Pos = 60.0
    panic_window_s: Pos = 6.0
    # Panic when the short window wants this many times the nodes there are.
    panic_threshold: Annotated[float, Field(ge=1)] = 2.0
    scale_up_cooldown_s: NonNeg = 2.0
    scale_down_cooldown_s: NonNeg = 20.0
    # No scale-down this soon after a scale-up (slow down, fast up).
    scale_down_delay_s: NonNeg = 30.0
    scale_down_step: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _bounds(self) -> PoolSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas "
                             f"({self.max_replicas})")
        if self.panic_window_s > self.stable_window_s:
            raise ValueError("panic_window_s must not exceed stable_window_s")
        return self

    @property
    def name(self) -> str:
        return self.model


class Policy(_Strict):
    pools: list[PoolSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Policy:
        models = [p.model for p in self.pools]
        if len(set(models)) != len(models):
            raise ValueError("each model may appear in one pool only")
        return self


DEFAULT_PRICES = PriceList(node_types={
    # A nominal price for one local CPU node, so cost reports are not all zero.
    "local-cpu": NodeType(usd_per_hour=0.05, capacity=2, startup_s=5, tokens_per_second=40),
})


def default_policy(model: str, min_replicas: int, max_replicas: int,
                   node_types: list[str] | None = None) -> Policy:
    return Policy(pools=[PoolSpec(model=model, node_types=node_types or ["local-cpu"],
                                  min_replicas=min_replicas, max_replicas=max_replicas)])


def _load(cls: type[_Strict], path: Path) -> Any:
    data = load_yaml(path)
    try:
        return cls.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError("; ".join(f"{path}: invalid field '{field or '(top level)'}': {msg}"
                                    for field, msg in field_errors(exc))) from exc


def load_prices(path: Path | None) -> PriceList:
    return DEFAULT_PRICES if path is None else _load(PriceList, path)


def load_policy(path: Path, prices: PriceList, prices_path: Path | None) -> Policy:
    policy: Policy = _load(Policy, path)
    check_node_types(policy, prices, str(path), str(prices_path or "the built-in price list"))
    return policy


def check_node_types(policy: Policy, prices: PriceList, policy_src: str, prices_src: str) -> None:
    for i, pool in enumerate(policy.pools):
        for j, name in enumerate(pool.node_types):
            if name not in prices.node_types:
                known = ", ".join(sorted(prices.node_types))
                raise ConfigError(f"{policy_src}: invalid field 'pools.{i}.node_types.{j}': "
                                  f"unknown node type '{name}' (not in {prices_src}; "
                                  f"known: {known})")

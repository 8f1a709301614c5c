"""The proxy's routing configuration: plugins, profiles that weigh them, presets, canaries.

A part of the settings (``ProxySettings.routing``), kept apart from the rest of
``core.config``; :mod:`inferno.proxy.routing` turns it into ready profiles.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoutingPlugin(_Frozen):
    type: str
    name: str
    params: dict[str, Any] = {}


class ScorerRef(_Frozen):
    ref: str
    weight: Annotated[float, Field(ge=0, le=1000)] = 1.0


class RoutingProfileSpec(_Frozen):
    filters: list[str] = ["not-draining", "healthy"]
    scorers: list[ScorerRef] = []
    picker: str = "max-score"


class RoutingConfig(_Frozen):
    plugins: list[RoutingPlugin] = []
    profiles: dict[str, RoutingProfileSpec]
    default_profile: str
    # model -> profile name; requests may also pick one with the x-inferno-profile header.
    model_profiles: dict[str, str] = {}
    # Weighted canary: public model name -> {served model: weight}, e.g. 90/10.
    canary: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = {}


def _preset(name: str, scorers: list[tuple[str, float]], picker: str = "max-score"
            ) -> RoutingConfig:
    spec = RoutingProfileSpec(scorers=[ScorerRef(ref=r, weight=w) for r, w in scorers],
                              picker=picker)
    return RoutingConfig(profiles={name: spec}, default_profile=name)


# "model-loaded" (weight 4) first: a node that must load the model first answers seconds
# to minutes later, which no amount of load balancing makes up for.
ROUTING_PRESETS: dict[str, RoutingConfig] = {
    "least-outstanding": _preset("least-outstanding", [
        ("model-loaded", 4.0), ("least-outstanding", 1.0), ("queue-depth", 0.5),
        ("latency", 0.25)]),
    "round-robin": _preset("round-robin", [], picker="round-robin"),
    "prefix-affinity": _preset("prefix-affinity", [
        ("model-loaded", 4.0), ("prefix-affinity", 2.0), ("least-outstanding", 1.0)]),
    "power-of-two": _preset("power-of-two", [
        ("model-loaded", 4.0), ("least-outstanding", 1.0), ("queue-depth", 0.5)],
        picker="weighted-random"),
    "cost": _preset("cost", [("model-loaded", 4.0), ("cost", 2.0), ("least-outstanding", 1.0)]),
    # Local first; the cloud takes the excess while local queue wait is over 2 s.
    "hybrid": _preset("hybrid", [
        ("model-loaded", 4.0), ("offload", 3.0), ("least-outstanding", 1.0)]),
}


def _routing(v: Any) -> Any:
    if isinstance(v, str):
        if v not in ROUTING_PRESETS:
            raise ValueError(f"unknown routing preset '{v}' "
                             f"(known: {', '.join(ROUTING_PRESETS)}); or give a mapping")
        return ROUTING_PRESETS[v]
    return v

"""Routing plugins, registered in one table: the only place a type name becomes a class.

``build_router`` turns the routing config (plugins with names and params, profiles that
reference them with weights, canary splits) into ready :class:`Profile` objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferno.core.errors import ConfigError
from inferno.core.routing_config import RoutingConfig
from inferno.proxy.routing.base import Filter, Picker, RouteContext, Scorer
from inferno.proxy.routing.filters.healthy import Healthy
from inferno.proxy.routing.filters.not_draining import NotDraining
from inferno.proxy.routing.pickers.max_score import MaxScore
from inferno.proxy.routing.pickers.round_robin import RoundRobin
from inferno.proxy.routing.pickers.weighted_random import WeightedRandom
from inferno.proxy.routing.profile import Decision, Profile
from inferno.proxy.routing.scorers.cost import Cost
from inferno.proxy.routing.scorers.latency import Latency
from inferno.proxy.routing.scorers.least_outstanding import LeastOutstanding
from inferno.proxy.routing.scorers.model_loaded import ModelLoaded
from inferno.proxy.routing.scorers.offload import Offload
from inferno.proxy.routing.scorers.prefix_affinity import PrefixAffinity
from inferno.proxy.routing.scorers.queue_depth import QueueDepth
from inferno.proxy.routing.scorers.session_affinity import SessionAffinity

FILTERS: dict[str, Callable[..., Filter]] = {
    Healthy.name: Healthy,
    NotDraining.name: NotDraining,
}
SCORERS: dict[str, Callable[..., Scorer]] = {
    LeastOutstanding.name: LeastOutstanding,
    QueueDepth.name: QueueDepth,
    Latency.name: Latency,
    Cost.name: Cost,
    SessionAffinity.name: SessionAffinity,
    PrefixAffinity.name: PrefixAffinity,
    Offload.name: Offload,
    ModelLoaded.name: ModelLoaded,
}
PICKERS: dict[str, Callable[..., Picker]] = {
    MaxScore.name: MaxScore,
    WeightedRandom.name: WeightedRandom,
    RoundRobin.name: RoundRobin,
}
# Candidates a profile ranks per request in a large pool (see routing/profile.py).
SAMPLE = 8
_KINDS: dict[str, dict[str, Callable[..., Any]]] = {
    "filter": FILTERS, "scorer": SCORERS, "picker": PICKERS}


def build_router(config: RoutingConfig) -> dict[str, Profile]:
    """Instantiate every plugin once, then assemble the profiles that reference them."""
    instances: dict[str, tuple[str, Any]] = {}
    for plugin in config.plugins:
        kind = next((k for k, table in _KINDS.items() if plugin.type in table), None)
        if kind is None:
            known = ", ".join(sorted({n for t in _KINDS.values() for n in t}))
            raise ConfigError(f"routing plugin '{plugin.name}': unknown type '{plugin.type}' "
                              f"(known: {known})")
        try:
            instances[plugin.name] = (kind, _KINDS[kind][plugin.type](**plugin.params))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"routing plugin '{plugin.name}': bad params: {exc}") from exc

    def ref(name: str, kind: str, profile: str) -> Any:
        if name not in instances:
            # A bare type name works too, as a plugin with default params.
            table = _KINDS[kind]
            if name in table:
                instances[name] = (kind, table[name]())
            else:
                raise ConfigError(f"routing profile '{profile}': no {kind} named '{name}'")
        found_kind, obj = instances[name]
        if found_kind != kind:
            raise ConfigError(f"routing profile '{profile}': '{name}' is a {found_kind}, "
                              f"not a {kind}")
        return obj

    profiles: dict[str, Profile] = {}
    for pname, spec in config.profiles.items():
        scorers = [(ref(s.ref, "scorer", pname), s.weight) for s in spec.scorers]
        picker = ref(spec.picker, "picker", pname)
        plugins = [obj for obj, _ in scorers]
        whole = any(getattr(p, "needs_all", False) for p in [*plugins, picker])
        profiles[pname] = Profile(
            name=pname,
            filters=[ref(f, "filter", pname) for f in spec.filters],
            scorers=scorers,
            picker=picker,
            observers=[p for p in plugins if hasattr(p, "observe")],
            needs_prefix=any(getattr(p, "needs_prefix", False) for p in plugins),
            sample=0 if whole else SAMPLE,
            preferrers=[p for p in plugins if hasattr(p, "prefer")],
        )
    if config.default_profile not in profiles:
        raise ConfigError(f"routing: default_profile '{config.default_profile}' is not defined")
    return profiles


__all__ = ["FILTERS", "PICKERS", "SCORERS", "Decision", "Profile", "RouteContext",
           "build_router"]

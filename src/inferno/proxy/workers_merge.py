"""One proxy's ops answers from the answers of its worker processes.

- ``/metrics``: counters, histograms and summaries are summed over the workers (one
  series per label set, as one process would report it); gauges (in flight now, nodes by
  state, ...) are each worker's own view, so they keep a ``worker`` label. ``_created``
  series are dropped: a sum of start times means nothing.
- ``/telemetry`` and ``/router/state``: the first worker's document, with every count
  that adds up (requests, in flight, failures, queue) summed over the workers, per node
  by id, and a ``workers`` list with each worker's own view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

_SUMMED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
_TELEMETRY_NODE_SUMS = ("outstanding", "requests", "failures")
_STATE_NODE_SUMS = ("in_flight", "requests", "failures", "ejections")


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_metrics(texts: list[tuple[int, str]]) -> bytes:
    """Prometheus text of every worker, as (worker index, text), as one."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name.endswith("_created"):
                continue
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type,
                                                     fam.unit)
                values[fam.name] = {}
            summed = fam.type in _SUMMED
            series = values[fam.name]
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                labels = tuple(s.labels.items())
                if not summed:
                    labels += (("worker", str(index)),)
                key = (s.name, labels)
                series[key] = series.get(key, 0.0) + s.value
    for name, merged in families.items():
        for (sample, labels), value in values[name].items():
            merged.add_sample(sample, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)


def merge_telemetry(docs: list[dict[str, Any]], *, ident: str, state: str,
                    who: list[tuple[int, int]]) -> dict[str, Any]:
    """``docs[i]`` is from the worker ``who[i]`` = (index, pid)."""
    base = dict(docs[0])
    base.update(id=ident, state=state,
                in_flight=sum(int(d.get("in_flight", 0)) for d in docs),
                requests_total=sum(int(d.get("requests_total", 0)) for d in docs),
                nodes=_merge_nodes([d.get("nodes") or [] for d in docs], _TELEMETRY_NODE_SUMS))
    for key in ("held", "unserved"):  # per model: requests waiting for a standby model
        counts: dict[str, int] = {}
        for d in docs:
            for model, n in (d.get(key) or {}).items():
                counts[model] = counts.get(model, 0) + int(n)
        base[key] = counts
    base["workers"] = [{"index": i, "pid": pid, "state": d.get("state"),
                        "in_flight": d.get("in_flight", 0),
                        "requests_total": d.get("requests_total", 0)}
                       for (i, pid), d in zip(who, docs, strict=True)]
    return base


def merge_router_state(docs: list[dict[str, Any]], who: list[tuple[int, int]]
                       ) -> dict[str, Any]:
    base = dict(docs[0])
    base["nodes"] = _merge_nodes([d.get("nodes") or [] for d in docs], _STATE_NODE_SUMS)
    base["admission"] = {k: sum(int(d.get("admission", {}).get(k, 0)) for d in docs)
                         for k in ("queued", "rejected")}
    profiles = {name: dict(p) for name, p in (base.get("profiles") or {}).items()}
    for name, profile in profiles.items():
        scorers = [dict(s) for s in profile.get("scorers", [])]
        for s in scorers:
            s["calls"] = sum(sc.get("calls", 0) for d in docs
                             for sc in d.get("profiles", {}).get(name, {}).get("scorers", [])
                             if sc.get("name") == s.get("name"))
        profile["scorers"] = scorers
    base["profiles"] = profiles
    base["workers"] = [{"index": i, "pid": pid, "retry_budget": d.get("retry_budget"),
                        "nodes": [{k: n.get(k) for k in ("id", "state", "healthy", "routable",
                                                         "breaker", "in_flight")}
                                  for n in d.get("nodes") or []]}
                       for (i, pid), d in zip(who, docs, strict=True)]
    return base


def _merge_nodes(lists: list[list[dict[str, Any]]], sums: tuple[str, ...]
                 ) -> list[dict[str, Any]]:
    """Every node any worker knows, by id (the first worker's view), counts summed."""
    merged: dict[str, dict[str, Any]] = {}
    for nodes in lists:
        for node in nodes:
            node_id = str(node.get("id"))
            known = merged.get(node_id)
            if known is None:
                merged[node_id] = dict(node)
                continue
            for key in sums:
                if isinstance(node.get(key), int | float):
                    known[key] = known.get(key, 0) + node[key]
    return list(merged.values())

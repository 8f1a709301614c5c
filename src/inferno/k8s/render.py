"""``inferno k8s render``: every manifest of an install, as plain dicts, without Helm.

The Helm chart (``deploy/helm/inferno``) produces the same objects from the same values
(:mod:`inferno.k8s.values`); ``tests/unit/test_k8s_render_chart.py`` holds them together.
Objects are named ``<name>-<component>`` and labelled the Kubernetes way
(``app.kubernetes.io/*``); Secrets are created only for values given inline.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from inferno.k8s.render_rbac import GOVERNATOR_RULES, OPERATOR_RULES, PROXY_RULES, rbac
from inferno.k8s.render_workloads import governator, operator, proxy
from inferno.k8s.values import RenderValues, SecretRef

Meta = Callable[[str], dict[str, Any]]
DASHBOARD_FILE = "grafana-dashboard.json"


def dashboard_json() -> str:
    """The Grafana dashboard (a copy of deploy/grafana/inferno.json shipped in the
    package, so a pip-installed ``inferno`` renders it too)."""
    return resources.files("inferno.k8s").joinpath(DASHBOARD_FILE).read_text()


def labels(v: RenderValues, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "inferno", "app.kubernetes.io/instance": v.name,
            "app.kubernetes.io/component": component}


def metadata(v: RenderValues) -> Meta:
    def meta(component: str) -> dict[str, Any]:
        return {"name": f"{v.name}-{component}", "namespace": v.namespace,
                "labels": labels(v, component)}
    return meta


def secret_refs(v: RenderValues) -> dict[str, SecretRef | None]:
    """Where each secret value is read from: the user's Secret, or the one rendered here
    from an inline value; None when the value is not set at all."""
    def ref(inline: str | None, given: SecretRef | None, component: str,
            key: str) -> SecretRef | None:
        if inline:
            return SecretRef(name=f"{v.name}-{component}", key=key)
        return given

    return {"database": ref(v.database.url, v.database.secret_ref, "database", "url"),
            "redis": ref(v.redis.url, v.redis.secret_ref, "redis", "url"),
            "nodeToken": ref(v.node_token.value, v.node_token.secret_ref, "node-token",
                             "token")}


def render(v: RenderValues, *, crds: bool = True) -> list[dict[str, Any]]:
    """Every object of the install, in the order ``kubectl apply`` needs them."""
    from inferno.k8s.crds import all_crds

    meta = metadata(v)
    refs = secret_refs(v)
    out: list[dict[str, Any]] = list(all_crds()) if crds else []
    if v.create_namespace:
        out.append({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": v.namespace, "labels": labels(v, "namespace")}})
    for component, inline, key in (("database", v.database.url, "url"),
                                   ("redis", v.redis.url, "url"),
                                   ("node-token", v.node_token.value, "token")):
        if inline:
            out.append({"apiVersion": "v1", "kind": "Secret", "metadata": meta(component),
                        "type": "Opaque", "stringData": {key: inline}})
    out += rbac(meta, "proxy", PROXY_RULES)
    out += proxy(v, meta, refs)
    if v.operator.enabled:
        out += rbac(meta, "operator", OPERATOR_RULES)
        out += operator(v, meta, refs)
    if v.governator.enabled:
        out += rbac(meta, "governator", GOVERNATOR_RULES)
        out += governator(v, meta, refs)
    if v.grafana_dashboard.enabled:
        cm = meta("grafana-dashboard")
        cm["labels"]["grafana_dashboard"] = "1"
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": cm,
                    "data": {"inferno.json": dashboard_json()}})
    if v.service_monitor.enabled:
        out.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                    "metadata": meta("proxy"),
                    "spec": {"selector": {"matchLabels": labels(v, "proxy-ops")},
                             "namespaceSelector": {"matchNames": [v.namespace]},
                             "endpoints": [{"port": "ops", "path": "/metrics",
                                            "interval": "15s"}]}})
    return out


def apply_set(data: dict[str, Any], assignment: str) -> None:
    """``--set a.b=c`` as Helm reads it: a dotted path (intermediate mappings created);
    the value an integer, ``true``/``false``, ``null``, or else a string (so ``on`` stays
    the string it is in Helm, not YAML 1.1's boolean)."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {path}: {k} is not a mapping")
        node = child
    node[keys[-1]] = _scalar(raw)


def _scalar(raw: str) -> Any:
    if raw in ("true", "false"):
        return raw == "true"
    if raw == "null":
        return None
    if re.fullmatch(r"-?[0-9]+", raw):
        return int(raw)
    return raw


def write_manifests(objects: list[dict[str, Any]], directory: Path) -> list[Path]:
    """``crds.yaml`` (the CRDs) and ``inferno.yaml`` (the rest, namespace first) in
    ``directory``: ``kubectl apply -f DIR`` reads them in that order."""
    directory.mkdir(parents=True, exist_ok=True)
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    written = []
    for name, docs in (("crds.yaml", crds), ("inferno.yaml", rest)):
        if docs:
            path = directory / name
            path.write_text(dump_yaml(docs))
            written.append(path)
    return written


def dump_yaml(objects: list[dict[str, Any]]) -> str:
    """One YAML stream, keys in the order built, multi-line strings (the dashboard) as
    literal blocks, no anchors (``kubectl`` and reviewers read it; an alias between two
    objects would tie them together)."""
    import yaml

    class _Plain(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    _Plain.add_representer(str, text)
    return yaml.dump_all(objects, Dumper=_Plain, sort_keys=False, width=100)

"""``inferno k8s render``: every manifest validates offline against Kubernetes' own schemas
(kubernetes-validate, strict), for the default values and with every option turned on; the
environment the manifests give each container is what that component reads; RBAC stays
namespaced and narrow; ``deploy/k8s`` is what the command writes today."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from inferno.cli import app
from inferno.core.config import GovernatorSettings, ProxySettings
from inferno.k8s.render import apply_set, dump_yaml, render
from inferno.k8s.values import RenderValues

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.37.0"
EVERYTHING = ["governator.enabled=true", "serviceMonitor.enabled=true",
              "database.url=postgresql+asyncpg://inferno:pw@pg:5432/inferno",
              "redis.secretRef.name=redis", "redis.secretRef.key=url",
              "nodeToken.value=0123456789abcdef0123", "proxy.replicas=3",
              "proxy.serviceType=LoadBalancer"]


def values(*sets: str, **extra: Any) -> RenderValues:
    data: dict[str, Any] = {}
    for s in sets:
        apply_set(data, s)
    for section, more in extra.items():
        data.setdefault(section, {}).update(more)
    return RenderValues.model_validate(data)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def container_env(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("sets", [[], EVERYTHING], ids=["defaults", "everything"])
def test_every_builtin_manifest_validates_strictly(sets: list[str]) -> None:
    objects = render(values(*sets))
    builtin = [o for o in objects if o["kind"] != "ServiceMonitor"]
    kinds = {o["kind"] for o in builtin}
    assert {"CustomResourceDefinition", "Namespace", "ServiceAccount", "Role", "RoleBinding",
            "Deployment", "Service", "ConfigMap"} <= kinds
    for obj in builtin:  # raises ValidationError naming the field
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    # Objects round-trip through the YAML the command prints (no anchors, nothing lost).
    text = dump_yaml(objects)
    assert "&id" not in text
    assert list(yaml.safe_load_all(text)) == objects


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = one(render(values()), "Deployment", "inferno-proxy")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_service_monitor_selects_the_proxy_ops_service_only() -> None:
    objects = render(values("serviceMonitor.enabled=true"))
    monitor = one(objects, "ServiceMonitor", "inferno-proxy")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "inferno"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in by_kind(objects, "Service")
                if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["inferno-proxy-ops"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert not by_kind(render(values()), "ServiceMonitor")  # off by default


def test_only_the_api_port_may_leave_the_cluster() -> None:
    objects = render(values("proxy.serviceType=LoadBalancer"))
    api = one(objects, "Service", "inferno-proxy")
    ops = one(objects, "Service", "inferno-proxy-ops")
    assert api["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in api["spec"]["ports"]] == ["http"]
    assert ops["spec"]["type"] == "ClusterIP" and ops["spec"]["ports"][0]["port"] == 6100
    # Headless: the name resolves to every ready proxy pod, so each replica hears from
    # every node (and the operator, the governator), whatever proxy.replicas says.
    assert ops["spec"]["clusterIP"] == "None" and not ops["spec"]["publishNotReadyAddresses"]
    assert "clusterIP" not in api["spec"]
    pods = one(objects, "Deployment", "inferno-proxy")["spec"]["template"]["metadata"]
    assert api["spec"]["selector"] == ops["spec"]["selector"] == pods["labels"]
    # Nodes register, and the governator drains, through the ops Service.
    operator = container_env(one(objects, "Deployment", "inferno-operator"))
    assert operator["INFERNO_K8S_PROXY_OPS"] == "inferno-proxy-ops.inferno.svc:6100"


def test_operator_and_proxy_share_the_node_token() -> None:
    # The user's Secret (the default), then one rendered from an inline value.
    for sets in [(), ("nodeToken.value=0123456789abcdefXY",)]:
        secret = "inferno-node-token"
        objects = render(values(*sets))
        operator = container_env(one(objects, "Deployment", "inferno-operator"))
        proxy = container_env(one(objects, "Deployment", "inferno-proxy"))
        ref = {"secretKeyRef": {"name": secret, "key": "token"}}
        assert proxy["INFERNO_PROXY_NODE_TOKENS"] == operator["INFERNO_K8S_NODE_TOKEN"] == ref
        assert operator["INFERNO_K8S_NODE_TOKEN_SECRET"] == secret
        assert operator["INFERNO_K8S_NODE_TOKEN_KEY"] == "token"
        assert bool(by_kind(objects, "Secret")) == bool(sets)
    mine = render(values("nodeToken.secretRef.name=tokens", "nodeToken.secretRef.key=node"))
    operator = container_env(one(mine, "Deployment", "inferno-operator"))
    assert operator["INFERNO_K8S_NODE_TOKEN"] == {"secretKeyRef": {"name": "tokens",
                                                                   "key": "node"}}
    assert not by_kind(mine, "Secret")


def test_options_switch_objects_on_and_off() -> None:
    default = render(values())
    assert one(default, "Deployment", "inferno-operator")
    assert not [o for o in default if o["metadata"]["name"] == "inferno-governator"]
    assert not by_kind(default, "Secret")  # the node token is the user's Secret by default
    everything = render(values(*EVERYTHING))
    assert one(everything, "Deployment", "inferno-governator")
    assert {s["metadata"]["name"] for s in by_kind(everything, "Secret")} == {
        "inferno-database", "inferno-node-token"}  # redis: the user's Secret
    off = render(values("operator.enabled=false", "grafanaDashboard.enabled=false",
                        "createNamespace=false"), crds=False)
    assert {o["kind"] for o in off} == {"ServiceAccount", "Role", "RoleBinding",
                                        "Deployment", "Service"}


def test_proxy_environment_is_what_the_proxy_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable the proxy container gets is one ProxySettings reads (a misspelt name
    would be silently ignored by the proxy, and the setting left at its default)."""
    extra = {"extraEnv": [{"name": "INFERNO_PROXY_QUEUE_SIZE", "value": "64"}]}
    proxy = one(render(values(*EVERYTHING, proxy=extra)), "Deployment", "inferno-proxy")
    env = container_env(proxy)
    secrets = {"INFERNO_PROXY_NODE_TOKENS": "tok-0123456789abcdef",
               "INFERNO_DATABASE_URL": "postgresql+asyncpg://u:p@pg/db",
               "INFERNO_REDIS_URL": "redis://redis:6379/0"}
    assert {k for k, v in env.items() if isinstance(v, dict)} == set(secrets)
    for name in list(env):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("INFERNO_PROXY_DATA_DIR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, secrets.get(name, value))
    settings = ProxySettings()
    assert settings.host == "0.0.0.0" and settings.port == 8080 and settings.ops_port == 6100
    assert settings.auth == "on" and settings.queue_size == 64
    assert settings.database_url is not None and settings.redis_url is not None
    assert [t.get_secret_value() for t in settings.node_tokens] == ["tok-0123456789abcdef"]
    assert str(settings.data_dir) == env["INFERNO_DATA_DIR"]
    # The operator's routes ConfigMap, mounted (optional) where routing_file points.
    from inferno.k8s.objects_config import ROUTES

    pod = proxy["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "routes"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "routes"]
    assert volume["configMap"] == {"name": ROUTES, "optional": True}
    assert settings.routing_file is not None
    assert (str(settings.routing_file.parent), settings.routing_file.name) == (
        mount["mountPath"], "proxy.yaml")
    # Probes and Service ports point at ports the container declares.
    (container,) = proxy["spec"]["template"]["spec"]["containers"]
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert names == {"http": settings.port, "ops": settings.ops_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "ops"}


def test_governator_environment_is_what_the_governator_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gov = one(render(values("governator.enabled=true")), "Deployment", "inferno-governator")
    env = container_env(gov)
    monkeypatch.delenv("INFERNO_GOVERNATOR_DATA_DIR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, "inferno" if isinstance(value, dict) else value)
    settings = GovernatorSettings()
    assert settings.host == "0.0.0.0" and settings.ops_port == 6300
    assert settings.proxy_ops == "inferno-proxy-ops:6100"
    assert settings.k8s_namespace == "inferno"  # from the pod's namespace (fieldRef)
    (container,) = gov["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["governator", "run", "--provider", "kubernetes"]
    # The operator's combined policy ConfigMap, mounted where the settings look for it;
    # optional, so the governator starts before any InfernoScalingPolicy exists.
    from inferno.k8s.objects_config import GOVERNATOR

    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "policy"]
    (volume,) = [v for v in gov["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "policy"]
    assert volume["configMap"] == {"name": GOVERNATOR, "optional": True}
    assert settings.policy_optional and settings.reload_interval > 0
    for path in (settings.policy_file, settings.prices_file, settings.deployments_file):
        assert path is not None and str(path.parent) == mount["mountPath"]
    assert {settings.policy_file.name, settings.prices_file.name,  # type: ignore[union-attr]
            settings.deployments_file.name} == {  # type: ignore[union-attr]
        "policy.yaml", "prices.yaml", "deployments.yaml"}


def test_manifests_run_commands_the_cli_has() -> None:
    """Each container's args name an existing ``inferno`` command (the operator's command,
    ``inferno k8s operator``, lives in the ``k8s`` group beside ``render``)."""
    import typer.main

    root = typer.main.get_command(app)
    for dep in by_kind(render(values(*EVERYTHING)), "Deployment"):
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        args = [a for a in container["args"] if not a.startswith("-")]
        group: Any = root
        for word in args[:2]:
            if not hasattr(group, "commands"):
                break
            if args[:2] == ["k8s", "operator"] and word == "operator":
                break  # added by the operator module; the group is checked above
            assert word in group.commands, f"inferno {' '.join(args)}: no command {word!r}"
            group = group.commands[word]


def test_rbac_is_namespaced_and_narrow() -> None:
    objects = render(values(*EVERYTHING))
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(objects, "Role")}
    assert set(roles) == {"inferno-proxy", "inferno-operator", "inferno-governator"}
    for name, rules in roles.items():
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], name
            assert "secrets" not in rule["resources"], f"{name} may not read Secrets"
    proxy_verbs = {v for r in roles["inferno-proxy"] for v in r["verbs"]}
    assert proxy_verbs == {"get", "list", "watch"}
    operator = {(g, res): set(r["verbs"]) for r in roles["inferno-operator"]
                for g in r["apiGroups"] for res in r["resources"]}
    assert "create" not in operator[("inferno.dev", "infernodeployments")]  # users create CRs
    assert operator[("", "pods")] == {"get", "list", "watch"}
    assert operator[("", "events")] == {"create", "patch"}
    assert "patch" in operator[("inferno.dev", "infernodeployments/scale")]
    for binding in by_kind(objects, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject["name"] == binding["roleRef"]["name"] == binding["metadata"]["name"]
        dep = one(objects, "Deployment", subject["name"])
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == subject["name"]


def test_pods_run_unprivileged() -> None:
    for dep in by_kind(render(values(*EVERYTHING)), "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        (container,) = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_grafana_dashboard_config_map_holds_the_dashboard() -> None:
    cm = one(render(values()), "ConfigMap", "inferno-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["inferno.json"] == (ROOT / "deploy/grafana/inferno.json").read_text()


def test_set_parses_like_helm() -> None:
    data: dict[str, Any] = {}
    apply_set(data, "proxy.auth=on")
    apply_set(data, "proxy.replicas=3")
    apply_set(data, "serviceMonitor.enabled=true")
    apply_set(data, "database.url=postgresql+asyncpg://u:p@h/db?x=1")
    assert data == {"proxy": {"auth": "on", "replicas": 3},
                    "serviceMonitor": {"enabled": True},
                    "database": {"url": "postgresql+asyncpg://u:p@h/db?x=1"}}
    with pytest.raises(ValueError, match="key=value"):
        apply_set(data, "proxy.replicas")


def test_cli_writes_a_directory_and_refuses_bad_values(tmp_path: Path) -> None:
    runner = CliRunner()
    vals = tmp_path / "values.yaml"
    vals.write_text("proxy:\n  replicas: 2\n")
    result = runner.invoke(app, ["k8s", "render", "-f", str(vals), "--set",
                                 "serviceMonitor.enabled=true", "--namespace", "ml",
                                 "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    crds = list(yaml.safe_load_all((tmp_path / "out/crds.yaml").read_text()))
    rest = list(yaml.safe_load_all((tmp_path / "out/inferno.yaml").read_text()))
    assert len(crds) == 4 and rest[0]["kind"] == "Namespace"
    assert rest[0]["metadata"]["name"] == "ml"
    assert one(rest, "Deployment", "inferno-proxy")["spec"]["replicas"] == 2
    assert one(rest, "ServiceMonitor", "inferno-proxy")["metadata"]["namespace"] == "ml"
    bad = runner.invoke(app, ["k8s", "render", "--set", "proxy.auth=off"])
    assert bad.exit_code == 2
    assert "proxy.auth" in bad.output


def test_committed_deploy_k8s_is_current(tmp_path: Path) -> None:
    """deploy/k8s (kubectl apply -f deploy/k8s/) is what `make k8s-manifests` writes now."""
    result = CliRunner().invoke(app, ["k8s", "render", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("crds.yaml", "inferno.yaml"):
        assert (ROOT / "deploy/k8s" / name).read_text() == (tmp_path / name).read_text(), (
            f"deploy/k8s/{name} is stale: run make k8s-manifests")

"""The operator's object builders and status computations (pure functions, no cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from inferno.core.routing_config import RoutingConfig
from inferno.governator.spec import Policy, PriceList, check_node_types
from inferno.k8s import objects as ob
from inferno.k8s import status as st
from inferno.k8s.objects_config import policy_configmap, routes_configmap
from inferno.k8s.resources import API_VERSION


def body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "spec": spec,
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "generation": 3}}


MODEL = body("InfernoModel", "qwen", {"source": "hf://Qwen/Q-GGUF:Q4_K_M",
                                      "servedName": "qwen-chat", "cacheSize": "20Gi",
                                      "storageClassName": "fast",
                                      "serving": {"nCtx": 8192, "parallel": 8,
                                                  "quantize": "q8_0"}})


def test_model_children_are_owned_labelled_and_named_deterministically() -> None:
    pvc, job = ob.model_pvc(MODEL), ob.model_job(MODEL, image="img:1")
    assert pvc["metadata"]["name"] == "inferno-model-qwen"
    assert job["metadata"]["name"] == "inferno-pull-qwen"
    assert pvc == ob.model_pvc(MODEL)  # same input, same object: reconciles converge
    for obj in (pvc, job):
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref == {"apiVersion": API_VERSION, "kind": "InfernoModel", "name": "qwen",
                       "uid": "uid-qwen", "controller": True, "blockOwnerDeletion": True}
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "inferno-operator"
        assert obj["metadata"]["namespace"] == "ns"
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    ctr = job["spec"]["template"]["spec"]["containers"][0]
    assert ctr["image"] == "img:1"
    env = {e["name"]: e["value"] for e in ctr["env"]}
    assert env == {"SOURCE": "hf://Qwen/Q-GGUF:Q4_K_M", "TARGET": "qwen",
                   "INFERNO_MODELS_DIR": "/models"}


def test_pull_script_is_valid_shell_and_checks_a_pinned_digest(tmp_path: Any) -> None:
    digest = "sha256:" + "a" * 64
    model = body("InfernoModel", "m", {"source": "x", "digest": digest})
    ctr = ob.model_job(model)["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "EXPECTED_DIGEST", "value": digest} in ctr["env"]
    script = ctr["command"][-1]
    subprocess.run(["sh", "-n", "-c", script], check=True)  # parses
    # The digest check alone, fed the last line `inferno models pull --json` prints.
    check = script.split("python -c '", 1)[1].split("')", 1)[0]
    for digests, ok in ((["a" * 64], True), (["b" * 64], False)):
        done = json.dumps({"event": "done", "name": "m", "tag": "latest",
                           "digests": digests})
        out = subprocess.run([sys.executable, "-c", check], input=done, text=True,
                             capture_output=True, env={"EXPECTED_DIGEST": digest})
        assert (out.returncode == 0) is ok, out.stderr
        if ok:
            assert out.stdout.strip() == "m:latest"


def test_node_deployment_args_merge_defaults_overrides_and_engine_args() -> None:
    dep = body("InfernoDeployment", "web", {
        "modelRef": "qwen", "replicas": 0, "minReplicas": 2, "maxReplicas": 5, "parallel": 4,
        "gpuLayers": -1, "engineArgs": ["--parallel", "16"], "image": "custom:2",
        "resources": {"limits": {"nvidia.com/gpu": "1"}}, "nodeSelector": {"gpu": "h100"}})
    d = ob.node_deployment(dep, MODEL, "proxy-ops:6100")
    assert d["metadata"]["name"] == "inferno-node-web"
    assert d["spec"]["replicas"] == 2  # clamped up to minReplicas
    pod = d["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    args = ctr["args"]

    def arg(flag: str) -> str:
        return str(args[args.index(flag) + 1])
    assert (arg("--model"), arg("--served-name"), arg("--engine")) == (
        "qwen", "qwen-chat", "llamacpp")
    assert (arg("--n-ctx"), arg("--parallel"), arg("--quantize"), arg("--gpu-layers")) == (
        "8192", "4", "q8_0", "-1")
    assert args[-2:] == ["--parallel", "16"]  # engineArgs last: they win
    assert arg("--discovery-lb") == "proxy-ops:6100"
    assert ctr["image"] == "custom:2"
    assert ctr["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "inferno-model-qwen",
                                                          "readOnly": True}
    sel = d["spec"]["selector"]["matchLabels"]
    assert sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    assert ob.selector_string("web") == \
        "app.kubernetes.io/component=node,inferno.dev/deployment=web"
    svc = ob.node_service(dep)
    assert svc["spec"]["selector"] == sel and svc["spec"]["clusterIP"] == "None"


def test_routes_render_the_proxys_canary_config() -> None:
    r1 = body("InfernoRoute", "a", {"model": "chat", "profile": "prefix-affinity",
                                    "backends": [{"deployment": "v1", "weight": 90},
                                                 {"deployment": "v2", "weight": 10}]})
    r2 = body("InfernoRoute", "b", {"model": "code", "backends": [{"deployment": "gone"}]})
    cm = routes_configmap("ns", [r1, r2], {"v1": "qwen-1", "v2": "qwen-2"})
    routing = RoutingConfig.model_validate(yaml.safe_load(cm["data"]["proxy.yaml"])["routing"])
    assert routing.canary == {"chat": {"qwen-1": 90.0, "qwen-2": 10.0}}
    assert routing.model_profiles == {"chat": "prefix-affinity"}
    assert "prefix-affinity" in routing.profiles
    assert [o["name"] for o in cm["metadata"]["ownerReferences"]] == ["a", "b"]
    assert not any(o["controller"] for o in cm["metadata"]["ownerReferences"])


def test_scaling_policy_renders_what_the_governator_loads() -> None:
    policy = body("InfernoScalingPolicy", "p", {
        "deployment": "web", "targets": {"inFlightPerNode": 3},
        "nodePrice": {"usdPerHour": 1.2, "capacity": 8}})
    dep = body("InfernoDeployment", "web", {"modelRef": "qwen", "minReplicas": 1,
                                            "maxReplicas": 6})
    cm = policy_configmap(policy, dep, "qwen-chat")
    pol = Policy.model_validate(yaml.safe_load(cm["data"]["policy.yaml"]))
    prices = PriceList.model_validate(yaml.safe_load(cm["data"]["prices.yaml"]))
    check_node_types(pol, prices, "policy", "prices")
    assert (pol.pools[0].model, pol.pools[0].max_replicas) == ("qwen-chat", 6)
    assert pol.pools[0].targets.in_flight_per_node == 3
    assert prices.node_types["web"].capacity == 8


@pytest.mark.parametrize("job, downloaded, degraded", [
    (None, "False", "False"),
    ({"status": {"active": 1}}, "False", "False"),
    ({"status": {"succeeded": 1}}, "True", "False"),
    ({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}, "False", "True"),
])
def test_model_conditions_follow_the_job(job: Any, downloaded: str, degraded: str) -> None:
    conds = {c["type"]: c["status"] for c in st.model_conditions(job)}
    assert (conds["Downloaded"], conds["Degraded"]) == (downloaded, degraded)


def test_deployment_status_and_transition_times() -> None:
    dep = body("InfernoDeployment", "web", {"modelRef": "m", "replicas": 3})
    scaling = st.deployment_status(dep, {"status": {"replicas": 1, "readyReplicas": 1}})
    conds = {c["type"]: c for c in scaling["conditions"]}
    assert conds["Scaling"]["status"] == "True" and conds["Ready"]["status"] == "False"
    assert scaling["selector"] == ob.selector_string("web")
    failing = st.deployment_status(dep, {"status": {"conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}})
    assert {c["type"]: c["status"] for c in failing["conditions"]}["Degraded"] == "True"
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": "T0"}]
    same = st.merge_conditions(old, [st.condition("Ready", False, "x")], 4)
    flipped = st.merge_conditions(old, [st.condition("Ready", True, "x")], 4)
    assert same[0]["lastTransitionTime"] == "T0" and same[0]["observedGeneration"] == 4
    assert flipped[0]["lastTransitionTime"] != "T0"


def test_operator_command_wants_namespaces_or_all() -> None:
    from typer.testing import CliRunner

    from inferno.cli_k8s import k8s_app

    result = CliRunner().invoke(k8s_app, ["operator"])
    assert result.exit_code == 2
    assert "--namespace" in result.output
    result = CliRunner().invoke(k8s_app, ["operator", "-n", "a", "--all-namespaces"])
    assert result.exit_code == 2


def test_pods_run_as_the_install_does_and_nodes_get_the_registration_token() -> None:
    dep = body("InfernoDeployment", "web", {"modelRef": "qwen"})
    d = ob.node_deployment(dep, MODEL, "ops:6100", node_token=("tokens", "node"))
    job = ob.model_job(MODEL)
    for pod in (d["spec"]["template"]["spec"], job["spec"]["template"]["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        ctr = pod["containers"][0]
        assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in ctr["volumeMounts"]}
        assert {"/tmp", "/var/lib/inferno", "/models"} <= mounts  # writable where needed
    env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["INFERNO_BACKEND_NODE_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "tokens", "key": "node"}}
    plain = ob.node_deployment(dep, MODEL, "ops:6100")
    assert "INFERNO_BACKEND_NODE_TOKEN" not in {
        e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}

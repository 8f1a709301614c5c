"""The operator, run by kopf's test runner against kmock's Kubernetes emulator: each
resource's children and status, scaling, deletion and finalizers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import yaml

from inferno.core.routing_config import RoutingConfig
from tests.polling import eventually

pytest.importorskip("kopf")
pytest.importorskip("kmock")
pytest.importorskip("kubernetes")

from tests.k8s_emulator import Cluster, cluster, condition, is_, resource


async def until(cond: Any, what: str) -> Any:
    """Polls the emulator gently (each read is an HTTP call); kopf retries take a moment."""
    return await eventually(cond, what=what, timeout=15, interval=0.1)


MODEL = {"source": "hf://org/repo/model.gguf", "servedName": "chat-v1",
         "serving": {"nCtx": 2048, "parallel": 2}}


@pytest_asyncio.fixture
async def k8s() -> AsyncIterator[Cluster]:
    async with cluster() as c:
        await c.start_operator()
        yield c


async def downloaded_model(c: Cluster, name: str = "m") -> None:
    await c.create(resource("InfernoModel", name, MODEL))
    await until(lambda: c.get("Job", f"inferno-pull-{name}"), what="the pull Job")
    await c.status_patch("Job", f"inferno-pull-{name}", {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]})

    async def done() -> bool:
        return is_(await c.get("InfernoModel", name), "Downloaded")
    await until(done, what=f"InfernoModel {name} Downloaded")


async def test_model_pulls_into_a_cache_volume_and_reports_downloaded(k8s: Cluster) -> None:
    await k8s.create(resource("InfernoModel", "m", MODEL))
    job = await until(lambda: k8s.get("Job", "inferno-pull-m"), what="the pull Job")
    pvc = await k8s.get("PersistentVolumeClaim", "inferno-model-m")
    model = await k8s.get("InfernoModel", "m")
    assert pvc is not None and model is not None
    uid = model["metadata"]["uid"]
    for child in (job, pvc):
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "InfernoModel", "m", uid, True)
        assert child["metadata"]["labels"]["inferno.dev/model"] == "m"
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SOURCE"] == MODEL["source"] and env["TARGET"] == "m"
    assert "inferno models pull" in pod["containers"][0]["command"][-1]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "inferno-model-m"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"

    async def pulling() -> bool:
        return is_(await k8s.get("InfernoModel", "m"), "Downloaded", "False")
    await until(pulling, what="Downloaded=False while the Job runs")

    await k8s.status_patch("Job", "inferno-pull-m", {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]})

    async def downloaded() -> dict[str, Any] | None:
        m = await k8s.get("InfernoModel", "m")
        return m if is_(m, "Downloaded") else None
    m = await until(downloaded, what="Downloaded=True")
    c = condition(m, "Downloaded")
    assert c is not None and c["observedGeneration"] == 1 and c["reason"] == "PullSucceeded"
    assert m["status"]["observedGeneration"] == 1
    assert is_(m, "Degraded", "False")


async def test_a_failed_pull_degrades_the_model(k8s: Cluster) -> None:
    await k8s.create(resource("InfernoModel", "bad", MODEL))
    await until(lambda: k8s.get("Job", "inferno-pull-bad"), what="the pull Job")
    await k8s.status_patch("Job", "inferno-pull-bad", {"failed": 5, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})

    async def degraded() -> bool:
        m = await k8s.get("InfernoModel", "bad")
        return is_(m, "Degraded") and is_(m, "Downloaded", "False")
    await until(degraded, what="Degraded=True after the Job failed")


async def test_deployment_waits_for_its_model_then_scales_and_is_deleted(k8s: Cluster) -> None:
    await k8s.create(resource("InfernoDeployment", "d", {
        "modelRef": "m", "replicas": 9, "maxReplicas": 3, "threads": 2,
        "engineArgs": ["--keep-alive", "-1"]}))

    async def waiting() -> bool:
        c = condition(await k8s.get("InfernoDeployment", "d"), "Ready")
        return c is not None and c["reason"] == "ModelNotDownloaded"
    await until(waiting, what="the deployment to wait for its model")
    assert await k8s.get("Deployment", "inferno-node-d") is None

    await downloaded_model(k8s)
    node = await until(lambda: k8s.get("Deployment", "inferno-node-d"),
                            what="the node Deployment")
    assert node["spec"]["replicas"] == 3  # spec.replicas 9 clamped to maxReplicas
    ctr = node["spec"]["template"]["spec"]["containers"][0]
    args = ctr["args"]
    assert ctr["command"] == ["inferno", "backend"]
    assert args[args.index("--model") + 1] == "m"
    assert args[args.index("--served-name") + 1] == "chat-v1"
    assert args[args.index("--discovery-lb") + 1] == "inferno-proxy:6100"
    assert args[args.index("--n-ctx") + 1] == "2048"  # the model's serving default
    assert args[args.index("--threads") + 1] == "2"  # the deployment's override
    assert args[-2:] == ["--keep-alive", "-1"]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["INFERNO_BACKEND_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "status.podIP"
    assert ctr["volumeMounts"][0]["readOnly"] is True
    svc = await k8s.get("Service", "inferno-node-d")
    assert svc is not None and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == node["spec"]["selector"]["matchLabels"]

    # The governator's path: the scale subresource.
    await k8s.kube.call("PATCH", k8s.kube.path("InfernoDeployment", "default", "d", "scale"),
                        {"spec": {"replicas": 2}})

    async def followed() -> bool:
        n = await k8s.get("Deployment", "inferno-node-d")
        return n is not None and n["spec"]["replicas"] == 2
    await until(followed, what="the Deployment to follow the scale")

    await k8s.status_patch("Deployment", "inferno-node-d",
                           {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2})

    async def ready() -> dict[str, Any] | None:
        d = await k8s.get("InfernoDeployment", "d")
        return d if is_(d, "Ready") and d["status"].get("readyReplicas") == 2 else None
    d = await until(ready, what="Ready with 2 ready replicas")
    assert d["status"]["selector"] == \
        "app.kubernetes.io/component=node,inferno.dev/deployment=d"
    assert is_(d, "Scaling", "False") and is_(d, "Degraded", "False")
    assert "inferno.dev/operator" in d["metadata"]["finalizers"]

    await k8s.delete("InfernoDeployment", "d")

    async def gone() -> bool:
        return (await k8s.get("InfernoDeployment", "d") is None
                and await k8s.get("Deployment", "inferno-node-d") is None
                and await k8s.get("Service", "inferno-node-d") is None)
    await until(gone, what="the deployment and its children deleted")

    await k8s.delete("InfernoModel", "m")

    async def model_gone() -> bool:
        return (await k8s.get("InfernoModel", "m") is None
                and await k8s.get("Job", "inferno-pull-m") is None
                and await k8s.get("PersistentVolumeClaim", "inferno-model-m") is None)
    await until(model_gone, what="the model, its Job and cache deleted")


async def test_routes_and_scaling_policy_render_configmaps(k8s: Cluster) -> None:
    from inferno.governator.spec import Policy, PriceList, check_node_types

    await downloaded_model(k8s)
    await k8s.create(resource("InfernoRoute", "r", {
        "model": "chat", "backends": [{"deployment": "d", "weight": 90},
                                      {"deployment": "canary", "weight": 10}]}))

    async def missing() -> bool:
        c = condition(await k8s.get("InfernoRoute", "r"), "Ready")
        return c is not None and c["reason"] == "DeploymentMissing"
    await until(missing, what="the route to wait for its deployments")
    await k8s.create(resource("InfernoDeployment", "d", {"modelRef": "m"}))

    async def routed() -> dict[str, Any] | None:
        cm = await k8s.get("ConfigMap", "inferno-routes")
        return cm if cm is not None and "chat" in cm["data"]["proxy.yaml"] else None
    cm = await until(routed, what="the routes ConfigMap")
    routing = RoutingConfig.model_validate(yaml.safe_load(cm["data"]["proxy.yaml"])["routing"])
    assert routing.canary == {"chat": {"chat-v1": 90.0}}  # "canary" does not exist yet

    await k8s.create(resource("InfernoScalingPolicy", "p", {
        "deployment": "d", "nodePrice": {"usdPerHour": 0.5, "capacity": 4}}))
    pcm = await until(lambda: k8s.get("ConfigMap", "inferno-governator-p"),
                           what="the policy ConfigMap")
    policy = Policy.model_validate(yaml.safe_load(pcm["data"]["policy.yaml"]))
    prices = PriceList.model_validate(yaml.safe_load(pcm["data"]["prices.yaml"]))
    check_node_types(policy, prices, "policy.yaml", "prices.yaml")
    (pool,) = policy.pools
    assert (pool.model, pool.node_types, pool.min_replicas, pool.max_replicas) == (
        "chat-v1", ["d"], 1, 4)
    assert prices.node_types["d"].usd_per_hour == 0.5
    assert pcm["data"]["deployment"] == "infernodeployment/d"

    await k8s.delete("InfernoScalingPolicy", "p")
    await k8s.delete("InfernoRoute", "r")

    async def cleaned() -> bool:
        return (await k8s.get("ConfigMap", "inferno-routes") is None
                and await k8s.get("ConfigMap", "inferno-governator-p") is None
                and await k8s.get("InfernoRoute", "r") is None)
    await until(cleaned, what="the ConfigMaps deleted with their resources")


async def test_updates_reach_the_children(k8s: Cluster) -> None:
    await downloaded_model(k8s)
    await k8s.create(resource("InfernoDeployment", "d", {"modelRef": "m", "parallel": 2}))
    await k8s.create(resource("InfernoRoute", "r", {"model": "chat", "backends": [
        {"deployment": "d", "weight": 100}]}))
    await until(lambda: k8s.get("ConfigMap", "inferno-routes"), what="the routes ConfigMap")

    # A new source: the Job (its template immutable) is made anew, and the model is
    # no longer Downloaded until it succeeds.
    await k8s.spec_patch("InfernoModel", "m", {"source": "hf://org/other/model.gguf"})

    async def repulling() -> bool:
        job = await k8s.get("Job", "inferno-pull-m")
        m = await k8s.get("InfernoModel", "m")
        env = {e["name"]: e["value"] for e in
               (job or {}).get("spec", {}).get("template", {}).get("spec", {}).get(
                   "containers", [{}])[0].get("env", [])}
        c = condition(m, "Downloaded")
        return (env.get("SOURCE") == "hf://org/other/model.gguf" and c is not None
                and c["status"] == "False" and c["observedGeneration"] == 2)
    await until(repulling, what="a new pull Job, Downloaded=False at generation 2")
    assert None in k8s.history("batch/v1/jobs", "inferno-pull-m")  # the old one deleted
    await k8s.status_patch("Job", "inferno-pull-m", {"succeeded": 1})

    async def redownloaded() -> bool:
        return is_(await k8s.get("InfernoModel", "m"), "Downloaded")
    await until(redownloaded, what="Downloaded again")

    # New arguments roll the Deployment (nodes wait while their model is re-pulled);
    # new weights re-render the route.
    await k8s.spec_patch("InfernoDeployment", "d", {"parallel": 6})

    async def rolled() -> bool:
        n = await k8s.get("Deployment", "inferno-node-d")
        args = (n or {}).get("spec", {}).get("template", {}).get("spec", {}).get(
            "containers", [{}])[0].get("args", [])
        return "--parallel" in args and args[args.index("--parallel") + 1] == "6"
    await until(rolled, what="the Deployment's args updated")

    await k8s.create(resource("InfernoModel", "m2", {**MODEL, "servedName": "chat-v2"}))
    await k8s.create(resource("InfernoDeployment", "d2", {"modelRef": "m2"}))
    await k8s.spec_patch("InfernoRoute", "r", {"backends": [
        {"deployment": "d", "weight": 70}, {"deployment": "d2", "weight": 30}]})

    async def reweighted() -> bool:
        cm = await k8s.get("ConfigMap", "inferno-routes")
        data = yaml.safe_load((cm or {}).get("data", {}).get("proxy.yaml") or "{}")
        return bool(data) and data["routing"]["canary"] == {
            "chat": {"chat-v1": 70.0, "chat-v2": 30.0}}
    await until(reweighted, what="the route re-rendered with both deployments")


async def test_a_spec_the_schema_cannot_refuse_is_reported_in_status(k8s: Cluster) -> None:
    await downloaded_model(k8s)
    # Valid for the CRD's schema (each field alone), refused by the operator's model.
    await k8s.create(resource("InfernoDeployment", "bad", {
        "modelRef": "m", "minReplicas": 3, "maxReplicas": 2}))
    await k8s.create(resource("InfernoRoute", "zero", {
        "model": "chat", "backends": [{"deployment": "bad", "weight": 0}]}))

    async def refused(kind: str, name: str) -> dict[str, Any] | None:
        obj = await k8s.get(kind, name)
        c = condition(obj, "Ready")
        return c if c is not None and c["reason"] == "InvalidSpec" and is_(obj, "Degraded") \
            else None
    c = await until(lambda: refused("InfernoDeployment", "bad"), what="the deployment refused")
    assert "minReplicas (3) > maxReplicas (2)" in c["message"]
    c = await until(lambda: refused("InfernoRoute", "zero"), what="the route refused")
    assert "weight above 0" in c["message"]
    assert await k8s.get("Deployment", "inferno-node-bad") is None

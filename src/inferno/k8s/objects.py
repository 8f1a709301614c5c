"""The Kubernetes objects the operator makes of Inferno's resources, as plain dicts.

Pure functions: a resource's body in, the desired child out, with a deterministic name
(so a restarted operator finds what it made before instead of making it twice), the
``app.kubernetes.io/*`` labels, an ``inferno.dev/*`` label naming the parent, and an owner
reference (the API server's garbage collector removes children with their parent).
"""

from __future__ import annotations

from typing import Any

from inferno.k8s.resources import API_VERSION, DeploymentSpec, ModelSpec

MANAGED_BY = "inferno-operator"
LABEL_MODEL = "inferno.dev/model"
LABEL_DEPLOYMENT = "inferno.dev/deployment"
MODELS_DIR = "/models"  # where the cache volume is mounted (INFERNO_MODELS_DIR)
NODE_PORT = 8000
NODE_OPS_PORT = 6100
DEFAULT_IMAGE = "inferno:0.1.0"
DATA_DIR = "/var/lib/inferno"  # the image's INFERNO_DATA_DIR: an emptyDir (read-only root)
UID = 10001  # the image's user


def _hardened(pod: dict[str, Any]) -> dict[str, Any]:
    """As every pod of an install runs: non-root, read-only root filesystem, no
    capabilities; writable data and /tmp directories of its own."""
    for ctr in pod["containers"]:
        ctr["securityContext"] = {"allowPrivilegeEscalation": False,
                                  "readOnlyRootFilesystem": True,
                                  "capabilities": {"drop": ["ALL"]}}
        ctr["volumeMounts"] = [*ctr.get("volumeMounts", []),
                               {"name": "data", "mountPath": DATA_DIR},
                               {"name": "tmp", "mountPath": "/tmp"}]
    pod["securityContext"] = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                              "fsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}}
    pod["volumes"] = [*pod.get("volumes", []), {"name": "data", "emptyDir": {}},
                      {"name": "tmp", "emptyDir": {}}]
    return pod


def owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": owner.get("apiVersion", API_VERSION), "kind": owner["kind"],
            "name": meta["name"], "uid": meta.get("uid", ""), "controller": True,
            "blockOwnerDeletion": True}


def labels(component: str, instance: str, **extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "inferno", "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": instance, "app.kubernetes.io/managed-by": MANAGED_BY,
            **extra}


def meta(name: str, owner: dict[str, Any], lbl: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": owner["metadata"].get("namespace"), "labels": lbl,
            "ownerReferences": [owner_ref(owner)]}


def cache_name(model: str) -> str:
    return f"inferno-model-{model}"


def pull_job_name(model: str) -> str:
    return f"inferno-pull-{model}"


def node_name(deployment: str) -> str:
    return f"inferno-node-{deployment}"


def served_name(model: dict[str, Any]) -> str:
    spec = ModelSpec.model_validate(model["spec"])
    return spec.served_name or str(model["metadata"]["name"])


def model_pvc(model: dict[str, Any]) -> dict[str, Any]:
    spec = ModelSpec.model_validate(model["spec"])
    name = model["metadata"]["name"]
    pvc_spec: dict[str, Any] = {
        # Written once by the pull Job, then read by every node of every deployment.
        # ReadWriteOnce is what every provisioner offers (kind's local-path only that);
        # it lets pods on one Kubernetes node share the volume. Nodes spread over several
        # need a storage class whose volumes attach to many (ReadWriteMany).
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.cache_size}}}
    if spec.storage_class_name:
        pvc_spec["storageClassName"] = spec.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": meta(cache_name(name), model,
                              labels("model-cache", name, **{LABEL_MODEL: name})),
            "spec": pvc_spec}


# `inferno models pull` names the stored model after its source; the Job tags it with the
# resource's name, so nodes ask for `--model NAME` whatever the source was.
_PULL_SCRIPT = """set -eu
inferno models pull "$SOURCE" --json > /tmp/pull.jsonl
cat /tmp/pull.jsonl
ref=$(tail -n 1 /tmp/pull.jsonl | python -c '
import json, os, sys
done = json.load(sys.stdin)
want = os.environ.get("EXPECTED_DIGEST", "")
have = [d if d.startswith("sha256:") else "sha256:" + d.split("-")[-1] for d in done["digests"]]
if want and want not in have:
    sys.exit(f"digest mismatch: want {want}, pulled {have}")
print(done["name"] + ":" + done["tag"])')
inferno models tag "$ref" "$TARGET"
inferno models verify
"""


def model_job(model: dict[str, Any], image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    spec = ModelSpec.model_validate(model["spec"])
    name = model["metadata"]["name"]
    lbl = labels("model-pull", name, **{LABEL_MODEL: name})
    env = [{"name": "SOURCE", "value": spec.source}, {"name": "TARGET", "value": name},
           {"name": "INFERNO_MODELS_DIR", "value": MODELS_DIR}]
    if spec.digest:
        env.append({"name": "EXPECTED_DIGEST", "value": spec.digest})
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": meta(pull_job_name(name), model, lbl),
            "spec": {"backoffLimit": 4, "template": {
                "metadata": {"labels": lbl},
                "spec": _hardened({"restartPolicy": "OnFailure", "containers": [{
                    "name": "pull", "image": image, "command": ["sh", "-c", _PULL_SCRIPT],
                    "env": env,
                    "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}]}],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {
                        "claimName": cache_name(name)}}]})}}}


def desired_replicas(spec: DeploymentSpec) -> int:
    return max(spec.min_replicas, min(spec.replicas, spec.max_replicas))


def backend_args(spec: DeploymentSpec, model: dict[str, Any], proxy_ops: str) -> list[str]:
    """``inferno backend``'s arguments: the model's serving defaults, this deployment's
    overrides, then its engineArgs as given (last, so they win)."""
    mspec = ModelSpec.model_validate(model["spec"])
    serving = mspec.serving
    args = ["--model", str(model["metadata"]["name"]), "--served-name", served_name(model),
            "--engine", mspec.engine, "--host", "0.0.0.0", "--port", str(NODE_PORT),
            "--ops-port", str(NODE_OPS_PORT), "--discovery-lb", proxy_ops,
            "--n-ctx", str(spec.n_ctx or serving.n_ctx),
            "--parallel", str(spec.parallel or serving.parallel)]
    threads = spec.threads or serving.threads
    if threads:
        args += ["--threads", str(threads)]
    if serving.quantize != "auto":
        args += ["--quantize", serving.quantize]
    if spec.gpu_layers:
        args += ["--gpu-layers", str(spec.gpu_layers)]
    return args + list(spec.engine_args)


def selector(deployment: str) -> dict[str, str]:
    return {"app.kubernetes.io/component": "node", LABEL_DEPLOYMENT: deployment}


def selector_string(deployment: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector(deployment).items()))


def node_deployment(dep: dict[str, Any], model: dict[str, Any], proxy_ops: str,
                    image: str = DEFAULT_IMAGE,
                    node_token: tuple[str, str] | None = None) -> dict[str, Any]:
    """``node_token``: (Secret, key) of the token nodes register with, if the proxy wants
    one (its ``node_tokens``)."""
    spec = DeploymentSpec.model_validate(dep["spec"])
    name = dep["metadata"]["name"]
    lbl = labels("node", name, **{LABEL_DEPLOYMENT: name,
                                  LABEL_MODEL: str(model["metadata"]["name"])})
    container: dict[str, Any] = {
        "name": "backend", "image": spec.image or image, "command": ["inferno", "backend"],
        "args": backend_args(spec, model, proxy_ops),
        "env": [
            {"name": "INFERNO_MODELS_DIR", "value": MODELS_DIR},
            # The proxy reaches each node at its pod IP; the node id is the pod's name.
            {"name": "INFERNO_BACKEND_ADVERTISE_HOST",
             "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "INFERNO_BACKEND_NODE_ID",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *([{"name": "INFERNO_BACKEND_NODE_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": node_token[0], "key": node_token[1]}}}] if node_token else [])],
        "ports": [{"name": "http", "containerPort": NODE_PORT},
                  {"name": "ops", "containerPort": NODE_OPS_PORT}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "ops"},
                           "periodSeconds": 5},
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True}]}
    resources = spec.resources.wire()
    if resources.get("requests") or resources.get("limits"):
        container["resources"] = {k: v for k, v in resources.items() if v}
    pod: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": 60,  # past the node's drain (30 s by default)
        "volumes": [{"name": "models", "persistentVolumeClaim": {
            "claimName": cache_name(str(model["metadata"]["name"])), "readOnly": True}}]}
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    _hardened(pod)
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": meta(node_name(name), dep, lbl),
            "spec": {"replicas": desired_replicas(spec),
                     "selector": {"matchLabels": selector(name)},
                     "template": {"metadata": {"labels": lbl}, "spec": pod}}}


def node_service(dep: dict[str, Any]) -> dict[str, Any]:
    """A headless Service: one DNS record (and EndpointSlice entry) per ready pod."""
    name = dep["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": meta(node_name(name), dep,
                              labels("node", name, **{LABEL_DEPLOYMENT: name})),
            "spec": {"clusterIP": "None", "selector": selector(name),
                     "ports": [{"name": "http", "port": NODE_PORT, "targetPort": "http"},
                               {"name": "ops", "port": NODE_OPS_PORT, "targetPort": "ops"}]}}

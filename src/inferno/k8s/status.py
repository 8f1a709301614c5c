"""Status conditions (``metav1.Condition``) and each resource's status, computed from its
children's state alone, so every writer (the reconcile handler, the handlers watching
Jobs and Deployments, a restarted operator) arrives at the same status."""

from __future__ import annotations

import datetime
from typing import Any

from inferno.k8s.objects import desired_replicas, selector_string
from inferno.k8s.resources import DeploymentSpec


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool | None, reason: str, message: str = "") -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": type_, "status": status, "reason": reason, "message": message}


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]],
                     generation: int | None) -> list[dict[str, Any]]:
    """``new`` over ``old`` by type; a condition keeps its lastTransitionTime while its
    status does not change (the convention ``kubectl wait`` and dashboards rely on)."""
    by_type = {c.get("type"): c for c in old}
    for c in new:
        prev = by_type.get(c["type"])
        since = (prev.get("lastTransitionTime") if prev and prev.get("status") == c["status"]
                 else None) or now()
        merged = {**c, "lastTransitionTime": since}
        if generation is not None:
            merged["observedGeneration"] = generation
        by_type[c["type"]] = merged
    return list(by_type.values())


def same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` changes nothing of ``old`` (ignoring transition times)."""
    def strip(s: dict[str, Any]) -> dict[str, Any]:
        conds = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                 for c in s.get("conditions", [])]
        return {**s, "conditions": sorted(conds, key=lambda c: str(c.get("type")))}
    return all(strip(old).get(k) == v for k, v in strip(new).items())


def job_state(job: dict[str, Any] | None) -> str:
    """``pending``, ``succeeded`` or ``failed`` (a Job's terminal conditions)."""
    st = (job or {}).get("status") or {}
    for c in st.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if c.get("status") == "True" and c.get("type") == "Failed":
            return "failed"
    if int(st.get("succeeded") or 0) > 0:
        return "succeeded"
    return "pending"


def model_conditions(job: dict[str, Any] | None) -> list[dict[str, Any]]:
    state = job_state(job)
    if state == "succeeded":
        return [condition("Downloaded", True, "PullSucceeded", "the model is in the cache"),
                condition("Ready", True, "Downloaded"),
                condition("Degraded", False, "PullSucceeded")]
    if state == "failed":
        return [condition("Downloaded", False, "PullFailed", "the pull Job failed"),
                condition("Ready", False, "PullFailed"),
                condition("Degraded", True, "PullFailed", "the pull Job failed")]
    return [condition("Downloaded", False, "Pulling", "the pull Job is running"),
            condition("Ready", False, "Pulling"), condition("Degraded", False, "Pulling")]


def is_true(obj: dict[str, Any] | None, type_: str) -> bool:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conds)


def deployment_status(dep: dict[str, Any], node: dict[str, Any] | None) -> dict[str, Any]:
    """The InfernoDeployment's status from its Deployment's (None: not made yet)."""
    spec = DeploymentSpec.model_validate(dep["spec"])
    want = desired_replicas(spec)
    st = (node or {}).get("status") or {}
    replicas = int(st.get("replicas") or 0)
    ready = int(st.get("readyReplicas") or 0)
    # A rollout past its deadline, or pods the ReplicaSet cannot create (quota, admission).
    failed = any((c.get("type"), c.get("status")) in (("Progressing", "False"),
                                                      ("ReplicaFailure", "True"))
                 for c in st.get("conditions") or [])
    scaling = node is not None and (replicas != want or ready != want)
    conds = [
        condition("Ready", node is not None and ready >= want,
                  "NodesReady" if node is not None and ready >= want else "NodesStarting",
                  f"{ready}/{want} nodes ready"),
        condition("Scaling", scaling, "Scaling" if scaling else "Stable",
                  f"{replicas} -> {want} replicas" if scaling else ""),
        condition("Degraded", failed, "DeploymentFailing" if failed else "Healthy")]
    return {"replicas": replicas, "readyReplicas": ready,
            "selector": selector_string(str(dep["metadata"]["name"])), "conditions": conds}

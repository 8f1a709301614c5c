"""The operator survives API conflicts and server errors, dropped watch streams, and being
stopped half-way through a reconcile, without duplicating what it made; a deletion that
meets a running refresh timer is not held long."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from inferno.k8s import objects as ob
from inferno.k8s.operator_api import ApiError
from tests.polling import eventually

pytest.importorskip("kopf")
pytest.importorskip("kmock")
pytest.importorskip("kubernetes")

from tests.k8s_emulator import Cluster, cluster, is_, request, resource

MODEL = {"source": "hf://org/repo/model.gguf"}


async def until(cond: Any, what: str) -> Any:
    return await eventually(cond, what=what, timeout=20, interval=0.1)


@pytest_asyncio.fixture
async def k8s() -> AsyncIterator[Cluster]:
    async with cluster() as c:
        yield c


async def downloaded(c: Cluster, name: str = "m") -> None:
    await c.create(resource("InfernoModel", name, MODEL))
    await until(lambda: c.get("Job", f"inferno-pull-{name}"), what="the pull Job")
    await c.status_patch("Job", f"inferno-pull-{name}", {"succeeded": 1})

    async def done() -> bool:
        return is_(await c.get("InfernoModel", name), "Downloaded")
    await until(done, what="Downloaded")


def created_once(c: Cluster, plural: str, name: str) -> bool:
    """One object by that name, never deleted and made again."""
    history = c.history(plural, name)
    return bool(history) and None not in history


async def test_conflicts_and_server_errors_are_retried_without_duplicates(k8s: Cluster) -> None:
    # The emulator applies a write even when it answers it with an error: a create or a
    # patch "failing" here is one the server did and whose reply was lost. So: kopf's own
    # write (the finalizer) fails once; a create is refused as a conflict (an earlier
    # attempt made it); a create fails with a 500 after the server made it.
    finalizer = k8s.inject(request("update", "infernomodels"), 500)
    pvc = k8s.inject(request("create", "persistentvolumeclaims"), 409)
    job = k8s.inject(request("create", "jobs"), 500)
    await k8s.start_operator()
    await downloaded(k8s)
    assert (finalizer.hits, pvc.hits, job.hits) == (1, 1, 1)

    # Reads that fail change nothing: only retrying the reconcile makes the Deployment
    # (a Service is the first child each reconcile reads), and then scales it.
    node = k8s.inject(request("create", "deployments"), 500)
    reads = k8s.inject(request("fetch", "services"), 500, times=2)
    await k8s.create(resource("InfernoDeployment", "d", {"modelRef": "m", "replicas": 1}))
    await until(lambda: k8s.get("Deployment", "inferno-node-d"), what="the node Deployment")
    assert (node.hits, reads.hits) == (1, 2)
    patch = k8s.inject(request("update", "deployments"), 500)
    reads = k8s.inject(request("fetch", "services"), 503, times=2)
    await k8s.spec_patch("InfernoDeployment", "d", {"replicas": 3})

    async def scaled() -> bool:
        n = await k8s.get("Deployment", "inferno-node-d")
        return n is not None and n["spec"]["replicas"] == 3
    await until(scaled, what="replicas 3 despite failed reads and a failed patch")
    assert reads.hits == 2 and patch.hits == 1
    for plural, name in [("v1/persistentvolumeclaims", "inferno-model-m"),
                         ("batch/v1/jobs", "inferno-pull-m"),
                         ("apps/v1/deployments", "inferno-node-d"),
                         ("v1/services", "inferno-node-d")]:
        assert created_once(k8s, plural, name), plural
    assert len(await k8s.kube.list("Deployment", "default")) == 1


async def test_changes_made_while_watches_are_down_are_reconciled(k8s: Cluster) -> None:
    await k8s.start_operator()
    await downloaded(k8s)
    watches = k8s.em[lambda req: req.action is not None and req.action.value == "WATCH"]
    before = len(list(watches))
    assert await k8s.drop_connections() >= 3  # the watches of InfernoModels, Deployments,...
    # Made right after the drop, possibly before kopf watches again: it is found by the
    # listing kopf makes when it reconnects.
    async def created() -> bool:
        try:  # this client's pooled connection was cut too: the first try may fail
            await k8s.create(resource("InfernoDeployment", "d", {"modelRef": "m",
                                                                 "replicas": 2}))
        except ApiError as exc:
            assert exc.status == 503, exc
            return False
        return True
    await until(created, what="the InfernoDeployment created")
    node = await until(lambda: k8s.get("Deployment", "inferno-node-d"),
                       what="the Deployment after the watch streams dropped")
    assert node["spec"]["replicas"] == 2
    assert len(list(k8s.em[lambda req: req.action is not None
                           and req.action.value == "WATCH"])) > before  # watched anew


async def test_restart_half_way_through_a_reconcile_makes_no_duplicates(k8s: Cluster) -> None:
    await k8s.start_operator()
    await downloaded(k8s)
    # The Deployment can't be read: the reconcile stops after making the Service.
    stuck = k8s.inject(request("fetch", "deployments"), 503, times=10**6)
    await k8s.create(resource("InfernoDeployment", "d", {"modelRef": "m"}))
    await until(lambda: k8s.get("Service", "inferno-node-d"), what="the Service")
    await until(lambda: stuck.hits >= 2, what="the reconcile to fail and retry")
    await k8s.stop_operator()  # killed half-way
    stuck.off()
    assert await k8s.get("Deployment", "inferno-node-d") is None

    await k8s.start_operator()
    await until(lambda: k8s.get("Deployment", "inferno-node-d"),
                what="the Deployment after the restart")
    for plural, name in [("v1/services", "inferno-node-d"),
                         ("apps/v1/deployments", "inferno-node-d"),
                         ("batch/v1/jobs", "inferno-pull-m"),
                         ("v1/persistentvolumeclaims", "inferno-model-m")]:
        assert created_once(k8s, plural, name), plural
    assert len(await k8s.kube.list("Service", "default")) == 1
    assert len(await k8s.kube.list("Job", "default")) == 1


async def test_a_model_deleted_while_its_refresh_timer_runs_is_released(k8s: Cluster) -> None:
    # A model handled before (finalizer, kopf's last-handled annotation) and its pull Job,
    # done, without the operator's labels: the restarted operator resumes the model once,
    # and no Job event refreshes it, so once that reconcile has written the status every
    # read of the Job is the refresh timer's.
    model = resource("InfernoModel", "m", MODEL)
    job = ob.model_job(model)
    del job["metadata"]["labels"]
    await k8s.create({**job, "status": {"succeeded": 1}})
    model["metadata"] |= {"finalizers": ["inferno.dev/operator"], "annotations": {
        "kopf.zalando.org/last-handled-configuration": json.dumps({"spec": MODEL})}}
    await k8s.create(model)
    await k8s.start_operator()

    async def reconciled() -> bool:
        m = await k8s.get("InfernoModel", "m")
        return is_(m, "Downloaded") and m is not None and "cache" in m["status"]
    await until(reconciled, what="the resumed reconcile's status")
    gate, held = asyncio.Event(), []

    async def hold() -> object:
        held.append(1)
        await gate.wait()
        return NotImplemented  # then served as usual
    k8s.em[request("fetch", "jobs")] << hold
    try:
        await until(lambda: held, what="the refresh timer reading the Job")
        await k8s.delete("InfernoModel", "m")
        await until(lambda: k8s.history("batch/v1/jobs", "inferno-pull-m")[-1] is None,
                    what="the deletion handler (it deletes the Job)")
        assert len(held) == 1  # the timer still runs: kopf holds the finalizer for it
    finally:
        gate.set()

    async def gone() -> bool:
        return await k8s.get("InfernoModel", "m") is None
    # kopf looks at an exiting timer again after cancellation_polling (60 s by default)
    await until(gone, what="the finalizer removed once the timer finished")

"""Kubernetes mode end to end, without a cluster: InfernoModel + InfernoDeployment +
InfernoRoute applied to kmock's emulator; the operator (kopf's test runner) makes the pull
Job, the node Deployment and the routes ConfigMap; a real `inferno backend` process runs
the Deployment's pod template (its command, arguments and environment, with loopback
addresses for the pod's) as the pod would; a real proxy, whose routing the operator sets
at run time (PUT /routing, as it does in a cluster), takes its registration; a chat
completion for the route's public model is answered."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from inferno.core.routing_config import RoutingConfig
from inferno.proxy.gateway import Gateway
from tests.conftest import free_port, start_gateway
from tests.integration.procs import Proc
from tests.polling import eventually

pytestmark = pytest.mark.integration
pytest.importorskip("kopf")
pytest.importorskip("kmock")
pytest.importorskip("kubernetes")

from tests.k8s_emulator import cluster, is_, resource  # noqa: E402


async def until(cond: Any, what: str, within: float = 20) -> Any:
    return await eventually(cond, what=what, timeout=within, interval=0.1)


def pod_process(template: dict[str, Any], pod_name: str, proxy_ops: int,
                tmp: Path) -> Proc:
    """The pod template's container as a local process: its command and args, with the
    pod's addresses made loopback ones and the fake engine in place of llama.cpp."""
    (ctr,) = template["spec"]["containers"]
    assert ctr["command"] == ["inferno", "backend"]
    args = list(ctr["args"])
    port, ops = free_port(), free_port()
    swap = {"--host": "127.0.0.1", "--port": str(port), "--ops-port": str(ops),
            "--discovery-lb": f"127.0.0.1:{proxy_ops}", "--engine": "fake"}
    for flag, value in swap.items():
        args[args.index(flag) + 1] = value
    env = {}
    for e in ctr["env"]:
        field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[e["name"]] = {"status.podIP": "127.0.0.1", "metadata.name": pod_name}.get(
            field, e.get("value", ""))
    env["INFERNO_MODELS_DIR"] = str(tmp / "models")  # the cache volume's mount
    proc = Proc(pod_name, [sys.executable, "-m", "inferno", "backend", *args],
                tmp / f"{pod_name}.log", port, ops)
    proc.start(env)
    return proc


async def test_resources_to_a_routed_request(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, auth="none")  # default routing: no "chat" yet
    try:
        await _flow(gw, tmp_path)
    finally:
        await gw.drain()


async def _flow(gw: Gateway, tmp_path: Path) -> None:
    proxy_ops = f"127.0.0.1:{gw.ops.port}"
    async with cluster() as c:
        await c.start_operator(proxy_ops=proxy_ops)
        await c.create(resource("InfernoModel", "tiny", {
            "source": "hf://org/tiny/tiny.gguf", "servedName": "tiny-v1",
            "serving": {"nCtx": 512, "parallel": 2}}))
        await c.create(resource("InfernoDeployment", "tiny", {"modelRef": "tiny",
                                                              "replicas": 1}))
        await c.create(resource("InfernoRoute", "chat", {
            "model": "chat", "backends": [{"deployment": "tiny", "weight": 100}]}))

        # 1. The model's pull Job and cache volume; the Job "succeeds".
        await until(lambda: c.get("Job", "inferno-pull-tiny"), what="the pull Job")
        assert await c.get("PersistentVolumeClaim", "inferno-model-tiny") is not None
        assert await c.get("Deployment", "inferno-node-tiny") is None  # not downloaded yet
        await c.status_patch("Job", "inferno-pull-tiny", {"succeeded": 1})

        async def downloaded() -> bool:
            return is_(await c.get("InfernoModel", "tiny"), "Downloaded")
        await until(downloaded, what="Downloaded")

        # 2. The node Deployment, and the route rendered for the proxy.
        node = await until(lambda: c.get("Deployment", "inferno-node-tiny"),
                           what="the node Deployment")
        template = node["spec"]["template"]
        args = template["spec"]["containers"][0]["args"]
        assert args[args.index("--discovery-lb") + 1] == proxy_ops

        async def routed() -> dict[str, Any] | None:
            r = await c.get("InfernoRoute", "chat")
            return await c.get("ConfigMap", "inferno-routes") if is_(r, "Ready") else None
        cm = await until(routed, what="the route Ready and its ConfigMap")
        routing = RoutingConfig.model_validate(
            yaml.safe_load(cm["data"]["proxy.yaml"])["routing"])
        assert routing.canary == {"chat": {"tiny-v1": 100.0}}
        # 3. The same routing, PUT to the running proxy.
        await until(lambda: gw.router.config == routing, what="the proxy's routing")

    # 4. The pod, as a process, registers.
    pod = pod_process(template, "inferno-node-tiny-7d9f-abcde", gw.ops.port, tmp_path)
    try:
        await until(lambda: gw.pool.get("inferno-node-tiny-7d9f-abcde") is not None,
                    what="the pod to register", within=60)
        # 5. A request for the route's public model reaches it.
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(f"http://127.0.0.1:{gw.server.port}/v1/chat/completions",
                                json={"model": "chat", "max_tokens": 4,
                                      "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
    finally:
        pod.stop()

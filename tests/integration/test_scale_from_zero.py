"""Scale from zero, end to end: a proxy and a governator (local provider, fake engine) with
a pool at min_replicas 0 and no node running. The first request is held by the proxy, the
governator starts a node because of it, and the request is answered."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.procs import Proc, get_json, inferno, proxy, wait_until

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"


def vitals(proxy_ops: int) -> dict[str, object]:
    """The proxy's telemetry: held counts and nodes, read at one instant."""
    return get_json(proxy_ops, "/telemetry") or {}


def governator_state(ops_port: int) -> Any:
    return get_json(ops_port, "/governator/state") or {}


@pytest.mark.timeout(120)
def test_the_first_request_after_zero_is_held_until_a_node_starts(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"pools:\n  - model: {MODEL}\n    node_types: [local-cpu]\n"
                      "    min_replicas: 0\n    max_replicas: 1\n")
    gw = proxy(tmp_path)
    gov_ops = free_port()
    gov = Proc("governator", inferno("governator", "run", "--proxy-ops",
                                     f"127.0.0.1:{gw.ops_port}", "--provider", "local",
                                     "--policy", str(policy), "--ops-port", str(gov_ops),
                                     "--store", "memory"),
               tmp_path / "governator.log", 0, gov_ops)
    result: dict[str, object] = {}
    try:
        gw.start({"INFERNO_PROXY_STANDBY_MODELS": MODEL, "INFERNO_PROXY_HOLD_TIMEOUT": "60",
                  "INFERNO_PROXY_DATA_DIR": str(tmp_path / "proxy")})
        wait_until(lambda: vitals(gw.ops_port).get("state") == "ready", 30, "the proxy up", gw)
        gov.start({"INFERNO_GOVERNATOR_ENGINE": "fake", "INFERNO_GOVERNATOR_INTERVAL": "0.5"})

        def governed() -> bool:
            pools = governator_state(gov_ops).get("pools") or []
            return bool(pools) and pools[0].get("last_decision") is not None

        wait_until(governed, 30, "the governator's first decision", gw, gov)
        assert governator_state(gov_ops)["pools"][0]["nodes"] == []  # at zero, and idle

        def request() -> None:
            body = json.dumps({"model": MODEL, "max_tokens": 8, "stream": True,
                               "messages": [{"role": "user", "content": "hi"}]}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{gw.port}/v1/chat/completions",
                                         data=body, headers={"content-type": "application/json"})
            started = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=90) as r:
                    first = r.readline()
                    result["ttft_s"] = time.monotonic() - started
                    result["text"] = (first + r.read()).decode()
                    result["status"] = r.status
            except OSError as exc:
                result["error"] = repr(exc)

        client = threading.Thread(target=request, daemon=True)
        client.start()
        # The scenario: the request waits in the proxy while no node exists at all.
        wait_until(lambda: vitals(gw.ops_port).get("held") == {MODEL: 1}, 15,
                   "the request held by the proxy", gw, gov)
        seen = vitals(gw.ops_port)
        assert seen.get("nodes") == [] and "status" not in result, seen
        client.join(90)
        assert result.get("status") == 200, (result, gw.tail(), gov.tail())
        assert str(result["text"]).rstrip().endswith("data: [DONE]")
        # The governator started the node, because of the held request.
        state = governator_state(gov_ops)
        assert len(state["pools"][0]["nodes"]) == 1
        reasons = [d.get("reason", "") for d in state["decisions"]]
        assert any("scale from zero" in r for r in reasons), reasons
        print(f"\ntime to first token from zero: {result['ttft_s']:.2f} s", file=sys.stderr)
    finally:
        gov.stop()
        gw.stop()

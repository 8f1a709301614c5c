"""Canary secrets: a key, a node token and a prompt never show up where they must not."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import httpx2 as httpx
import pytest

from inferno.proxy.security.keys import create_key
from tests.conftest import start_fake_node, start_gateway
from tests.polling import eventually


async def test_canaries_never_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    node_token = f"canary-node-token-{uuid.uuid4().hex}"
    prompt = f"canary-prompt-{uuid.uuid4().hex}"
    gw = await start_gateway(tmp_path, auth="on", node_tokens=[node_token], cache=True)
    node = await start_fake_node()
    try:
        store = gw.security.store
        assert store is not None
        key, _ = await create_key(store, name="canary", rpm=6000)
        await gw.security.keys.refresh()
        api = f"http://127.0.0.1:{gw.server.port}"
        ops = f"http://127.0.0.1:{gw.ops.port}"
        reg = {"id": "n", "address": f"127.0.0.1:{node.server.port}", "metrics_port": 6100,
               "models": ["fake-model"], "lease_seconds": 60}
        msgs = [{"role": "user", "content": prompt}]
        bodies: list[str] = []
        async with httpx.AsyncClient() as http:
            for token in (node_token + "x", node_token[:-1], node_token):
                r = await http.post(f"{ops}/registration", json=reg,
                                    headers={"authorization": f"Bearer {token}"})
                bodies.append(r.text)
            assert r.status_code == 200
            good = {"authorization": f"Bearer {key}"}
            for headers in (good, {"authorization": f"Bearer {key}x"},
                            {"authorization": f"Bearer {key[:-1]}"}, {"authorization": key}):
                for body in ({"model": "fake-model", "messages": msgs, "max_tokens": 3},
                             {"model": "fake-model", "messages": msgs, "stream": True},
                             {"model": "fake-model", "messages": msgs, "temperature": 0},
                             {"model": "nope", "messages": msgs},
                             {"model": "fake-model", "messages": msgs, "temperature": 9},
                             {"model": "fake-model", "messages": msgs, "max_tokens": 99999}):
                    r = await http.post(f"{api}/v1/chat/completions", json=body,
                                        headers=headers)
                    bodies.append(r.text if r.status_code != 200 else "")
            bodies.append((await http.get(f"{api}/v1/requests", headers=good)).text)
            bodies.append((await http.get(f"{api}/v1/usage", headers=good)).text)
            await eventually(lambda: gw.api.in_flight == 0, what="every request finished")
            metrics = (await http.get(f"{ops}/metrics")).text
            telemetry = (await http.get(f"{ops}/telemetry")).text
        assert await gw.security.log.flush()
        rows = await store.requests.recent(limit=1000)
        keys = await store.keys.list()
        assert len(rows) == 24
        places = {"logs": caplog.text, "metrics": metrics, "telemetry": telemetry,
                  "error bodies": "\n".join(bodies), "request log": repr(rows),
                  "keys table": repr(keys)}
        for secret in (key, key[:-1], node_token, prompt):
            for where, text in places.items():
                assert secret not in text, f"a canary leaked into the {where}"
        cache_files = list((tmp_path / "cache").glob("*"))
        assert all(key.encode() not in f.read_bytes() for f in cache_files)
    finally:
        await node.drain()
        await gw.drain()

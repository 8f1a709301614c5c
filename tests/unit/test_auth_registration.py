"""Registration security, what reaches a node, and the request limits the proxy enforces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import pytest_asyncio

from inferno.api.node import Registration
from inferno.backend.registration import RegistrationClient
from inferno.net import HttpClient
from inferno.proxy import discovery
from inferno.proxy.gateway import Gateway
from tests.conftest import free_port, start_fake_node, start_gateway
from tests.polling import eventually

TOKEN, OTHER = "node-token-a", "node-token-b"


@pytest_asyncio.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    g = await start_gateway(tmp_path, node_tokens=[TOKEN, OTHER],
                            registration_allowlist=["127.0.0.0/8", "10.0.0.0/8:8000-8999",
                                                    "localhost"],
                            max_body_size=4096, max_header_size=2048)
    yield g
    await g.drain()


def reg(address: str = "127.0.0.1:8001", node_id: str = "n1", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "address": address, "metrics_port": 6100, "models": ["m"], **extra}


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        pytest.param(reg(), {}, 401, id="no-token"),
        pytest.param(reg(), auth("wrong"), 401, id="wrong-token"),
        pytest.param(reg(), {"authorization": TOKEN}, 401, id="not-bearer"),
        pytest.param(reg("169.254.169.254:80"), auth(TOKEN), 403, id="metadata-ip"),
        pytest.param(reg("169.254.10.1:8001"), auth(TOKEN), 403, id="link-local"),
        pytest.param(reg("metadata.google.internal:80"), auth(TOKEN), 403, id="metadata-name"),
        pytest.param(reg("[fe80::1]:8001"), auth(TOKEN), 403, id="link-local-v6"),
        pytest.param(reg("[::ffff:169.254.169.254]:80"), auth(TOKEN), 403, id="mapped-v4"),
        pytest.param(reg("0.0.0.0:8001"), auth(TOKEN), 403, id="unspecified"),
        pytest.param(reg("8.8.8.8:8001"), auth(TOKEN), 403, id="not-allowlisted"),
        pytest.param(reg("10.1.2.3:9000"), auth(TOKEN), 403, id="port-outside-range"),
        pytest.param(reg("http://127.0.0.1:8001"), auth(TOKEN), 400, id="other-scheme"),
        pytest.param(reg(url="file:///etc/passwd"), auth(TOKEN), 400, id="url-field"),
        pytest.param(reg("10.1.2.3:8001"), auth(TOKEN), 403, id="ops-port-outside-range"),
    ],
)
async def test_registration_refusals(gw: Gateway, body: dict[str, Any], headers: dict[str, str],
                                     status: int) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://127.0.0.1:{gw.ops.port}/registration", json=body,
                            headers=headers)
    assert r.status_code == status, r.text
    assert TOKEN not in r.text and "error" in r.json()
    assert gw.pool.get(body["id"]) is None


async def test_node_ids_cannot_be_taken_over(gw: Gateway) -> None:
    url = f"http://127.0.0.1:{gw.ops.port}/registration"
    async with httpx.AsyncClient() as http:
        assert (await http.post(url, json=reg(), headers=auth(TOKEN))).status_code == 200
        assert (await http.post(url, json=reg(), headers=auth(TOKEN))).status_code == 200
        hijack = await http.post(url, json=reg("127.0.0.2:8001"), headers=auth(OTHER))
        assert hijack.status_code == 403
        assert (await http.delete(f"{url}/n1", headers=auth(OTHER))).status_code == 403
        assert (await http.delete(f"{url}/n1")).status_code == 401
        assert gw.pool.get("n1") is not None and gw.pool.get("n1").host == "127.0.0.1"  # type: ignore[union-attr]
        assert (await http.delete(f"{url}/n1", headers=auth(TOKEN))).status_code == 200
        ok = await http.post(url, json=reg("localhost:8001", node_id="n2", metrics_port=8500),
                             headers=auth(TOKEN))
        assert ok.status_code == 200


async def test_a_repeated_registration_body_skips_only_the_address_checks(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal repeating an accepted body byte for byte is not parsed or address-checked
    again (for RECHECK seconds), but its token and the id's owner are."""
    checks: list[str] = []
    guard = gw.security.registration
    real = guard._check_address

    async def counted(host: str, port: int, param: str) -> None:
        checks.append(param)
        await real(host, port, param)
    monkeypatch.setattr(guard, "_check_address", counted)
    url = f"http://127.0.0.1:{gw.ops.port}/registration"
    body = orjson.dumps(reg())
    async with httpx.AsyncClient() as http:
        async def post(headers: dict[str, str]) -> int:
            return (await http.post(url, content=body, headers=headers)).status_code

        assert await post(auth(TOKEN)) == 200 and len(checks) == 2  # address, metrics_port
        assert await post(auth(TOKEN)) == 200
        assert len(checks) == 2  # the renewal took the short path ...
        assert await post(auth(OTHER)) == 403  # ... which still checks the id's owner
        assert await post({}) == 401  # ... and the token
        assert await post(auth("wrong")) == 401
        assert len(checks) == 2
        monkeypatch.setattr(discovery, "RECHECK", 0.0)  # the addresses are due again
        assert await post(auth(TOKEN)) == 200 and len(checks) == 4
        monkeypatch.undo()
        assert (await http.delete(f"{url}/n1", headers=auth(TOKEN))).status_code == 200
        # A node no longer in the pool registers anew: the whole check again.
        monkeypatch.setattr(guard, "_check_address", counted)
        assert await post(auth(TOKEN)) == 200 and len(checks) == 6
    assert gw.pool.get("n1") is not None


async def test_backend_sends_its_node_token(gw: Gateway) -> None:
    client = HttpClient()
    rc = RegistrationClient(f"127.0.0.1:{gw.ops.port}", Registration(**reg(node_id="b1")),
                            interval=0.1, client=client, token=TOKEN)
    rc.start()
    try:
        await eventually(lambda: gw.pool.get("b1") is not None, what="b1 to register")
    finally:
        await rc.deregister()
        await client.aclose()
    assert gw.pool.get("b1") is None


async def test_only_safe_headers_reach_the_node(gw: Gateway) -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.lower())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        gw.pool.upsert(Registration(**reg(f"127.0.0.1:{server.sockets[0].getsockname()[1]}"),
                                    lease_seconds=60))
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"http://127.0.0.1:{gw.server.port}/v1/completions",
                json={"model": "m", "prompt": "x"},
                headers={"authorization": "Bearer client-secret", "proxy-authorization": "x",
                         "x-inferno-internal": "1", "te": "trailers", "upgrade": "h2c",
                         "cookie": "session=1", "x-request-id": "rid-1"})
        assert r.status_code == 200
        head = seen[0]
        for name in (b"authorization", b"proxy-authorization", b"x-inferno-", b"te:",
                     b"upgrade", b"cookie", b"client-secret"):
            assert name not in head, name
        assert b"x-request-id: rid-1" in head
    finally:
        server.close()


async def test_node_redirects_are_not_followed(gw: Gateway) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\n"
                     b"content-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        gw.pool.upsert(Registration(**reg(f"127.0.0.1:{server.sockets[0].getsockname()[1]}"),
                                    lease_seconds=60))
        async with httpx.AsyncClient() as http:
            r = await http.post(f"http://127.0.0.1:{gw.server.port}/v1/completions",
                                json={"model": "m", "prompt": "x"})
        assert r.status_code == 502 and "location" not in r.headers
    finally:
        server.close()


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        pytest.param({"json": {"model": "m", "api_base": "http://evil"}}, 400, "api_base",
                     id="api-base"),
        pytest.param({"json": {"model": "m", "base_url": "http://evil"}}, 400, "base_url",
                     id="base-url"),
        pytest.param({"json": {"model": "m", "temperature": 5}}, 400, "temperature",
                     id="temperature-range"),
        pytest.param({"json": {"model": "m", "top_p": -1}}, 400, "top_p", id="top-p-range"),
        pytest.param({"json": {"model": "m", "max_tokens": 0}}, 400, "max_tokens",
                     id="max-tokens-zero"),
        pytest.param({"json": {"model": "m", "max_tokens": 1.5}}, 400, "max_tokens",
                     id="max-tokens-float"),
        pytest.param({"json": {"model": "m", "n": True}}, 400, "n", id="n-bool"),
        pytest.param({"json": {"model": "m", "frequency_penalty": "x"}}, 400,
                     "frequency_penalty", id="penalty-type"),
        pytest.param({"json": {"model": "m", "prompt": "x" * 5000}}, 413, None, id="body-limit"),
        pytest.param({"json": {"model": "m"}, "headers": {"x-big": "y" * 3000}}, 431, None,
                     id="header-limit"),
    ],
)
async def test_request_limits(gw: Gateway, kwargs: dict[str, Any], status: int,
                              param: str | None) -> None:
    gw.pool.upsert(Registration(**reg(f"127.0.0.1:{free_port()}"), lease_seconds=60))
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://127.0.0.1:{gw.server.port}/v1/completions", **kwargs)
    assert r.status_code == status
    if param is not None:
        assert r.json()["error"]["param"] == param


async def test_requests_refused_by_the_wire_layer_still_get_a_log_row(gw: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        too_big = await http.post(f"http://127.0.0.1:{gw.server.port}/v1/completions",
                                  json={"model": "m", "prompt": "x" * 5000})
        headers = await http.post(f"http://127.0.0.1:{gw.server.port}/v1/completions",
                                  json={"model": "m"}, headers={"x-big": "y" * 3000})
    assert (too_big.status_code, headers.status_code) == (413, 431)
    assert await gw.security.log.flush()
    assert gw.security.store is not None
    rows = await gw.security.store.requests.recent(limit=10)
    assert sorted((r["status"], r["error_code"]) for r in rows) == [
        (413, "payload_too_large"), (431, "headers_too_large")]


async def test_static_backends_cannot_be_claimed_by_registration(tmp_path: Path) -> None:
    node = await start_fake_node()
    address = f"127.0.0.1:{node.server.port}"
    static_id = discovery.static_id(address)
    assert address not in static_id and static_id.startswith("static-")
    g = await start_gateway(tmp_path, node_tokens=[TOKEN], backends=[address],
                            registration_allowlist=["127.0.0.0/8"])
    url = f"http://127.0.0.1:{g.ops.port}/registration"
    try:
        static = await eventually(lambda: g.pool.get(static_id), what="the static backend")
        assert static.source == "static"
        async with httpx.AsyncClient() as http:
            attempts = [
                # re-point the static id at another address, or merely renew it
                await http.post(url, json=reg("127.0.0.2:8001", node_id=static_id),
                                headers=auth(TOKEN)),
                await http.post(url, json=reg(address, node_id=static_id), headers=auth(TOKEN)),
                # deregister it
                await http.delete(f"{url}/{static_id}", headers=auth(TOKEN)),
                # a new node claiming a static- id
                await http.post(url, json=reg(node_id="static-0000"),
                                headers=auth(TOKEN)),
            ]
            no_token = await http.delete(f"{url}/{static_id}")
        for r in attempts:
            assert r.status_code == 403, r.text
            error = r.json()["error"]
            assert error["type"] == "permission_error" and "static" in error["message"]
        assert no_token.status_code == 401
        kept = g.pool.get(static_id)
        assert kept is static and kept.source == "static"
        assert (kept.host, kept.port) == ("127.0.0.1", node.server.port)
        assert g.pool.get("static-0000") is None
        # The static backend still serves.
        async with httpx.AsyncClient() as http:
            ok = await http.post(f"http://127.0.0.1:{g.server.port}/v1/completions",
                                 json={"model": "fake-model", "prompt": "x", "max_tokens": 1})
        assert ok.status_code == 200
        # An ordinary node still registers with the same token.
        async with httpx.AsyncClient() as http:
            assert (await http.post(url, json=reg(), headers=auth(TOKEN))).status_code == 200
    finally:
        await g.drain()
        await node.drain()

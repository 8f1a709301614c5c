"""``inferno.client``, the admin SDK, sync and async, against a real proxy with a store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inferno.client import AsyncClient, Client
from inferno.core.errors import (
    AuthenticationError,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    UpstreamConnectError,
)
from inferno.proxy.security.keys import create_key
from tests.conftest import free_port, start_gateway
from tests.polling import eventually


async def test_the_async_client_manages_keys_and_reads_the_trail(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path)
    try:
        assert gw.security.store is not None
        admin, admin_row = await create_key(gw.security.store, name="ops", scope="admin",
                                            models=None, rpm=None, tpm=None)
        await gw.security.keys.refresh()
        await eventually(lambda: gw.security.auth.enabled, what="auth on")
        url = f"http://127.0.0.1:{gw.server.port}/v1"  # the /v1 the openai SDK uses is fine
        async with AsyncClient(url, api_key=admin,
                               ops_url=f"http://127.0.0.1:{gw.ops.port}") as client:
            created = await client.create_key("ci", models=["m"], rpm=60)
            assert created.key.startswith(f"inf_{created.id}_") and created.rpm == 60
            keys = {k.id: k for k in await client.list_keys()}
            assert keys[created.id].models == ["m"] and not keys[created.id].revoked
            assert await client.revoke_key(created.id) is True
            with pytest.raises(NotFound):
                await client.revoke_key(created.id)  # not active any more

            async def trail() -> bool:
                page = await client.audit(action="key", limit=2)
                return len(page.entries) == 2 and page.has_more

            await eventually(trail, what="key actions in the trail")
            page = await client.audit(action="key", limit=2)
            older = await client.audit(action="key", before=page.next_before)
            assert [e["seq"] for e in page.entries + older.entries] == [3, 2, 1]
            assert {e["actor"] for e in page.entries} == {admin_row.id}

            assert await client.usage() == [] and await client.requests() == []
            state = await client.router_state()
            assert "profiles" in state and "nodes" in state
            with pytest.raises(ModelNotFound) as caught:
                await client.load_model("nope")
            assert caught.value.param == "model"  # the server's param comes along

        async with AsyncClient(url, api_key="inf_nope_nope") as stranger:
            with pytest.raises(AuthenticationError):
                await stranger.list_keys()
    finally:
        await gw.drain()


async def test_the_sync_client_and_its_errors(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path)
    try:
        assert gw.security.store is not None
        user, _ = await create_key(gw.security.store, name="app", scope="user", models=None,
                                   rpm=None, tpm=None)
        await gw.security.keys.refresh()
        await eventually(lambda: gw.security.auth.enabled, what="auth on")
        url = f"http://127.0.0.1:{gw.server.port}"

        def as_user() -> None:
            with Client(url, api_key=user) as client:
                assert client.usage() == []  # a user key reads its own usage
                with pytest.raises(PermissionDenied):
                    client.list_keys()

        await asyncio.to_thread(as_user)

        def unreachable() -> None:
            with Client(f"http://127.0.0.1:{free_port()}") as client, \
                    pytest.raises(UpstreamConnectError):
                client.list_keys()

        await asyncio.to_thread(unreachable)
    finally:
        await gw.drain()

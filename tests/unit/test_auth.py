"""The negative auth suite, scopes and JWT: nothing but a valid credential gets through."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from inferno.api.node import Registration
from inferno.backend.node import BackendNode
from inferno.core.errors import ConfigError
from inferno.proxy.gateway import Gateway
from inferno.proxy.security.jwt_tokens import JwtVerifier
from inferno.proxy.security.keys import create_key
from tests.conftest import start_fake_node, start_gateway

AUD, ISS = "inferno-test", "https://issuer.test"
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = _RSA.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
PUBLIC_PEM = _RSA.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
BODY = {"model": "fake-model", "prompt": "hi", "max_tokens": 2}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 300, **extra}


def rs256(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, PRIVATE_PEM, algorithm="RS256")


def unsigned(payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}." \
           f"{b64(json.dumps(payload).encode())}."


def hs256_with_public_key(payload: dict[str, Any]) -> str:
    """The algorithm-confusion attack: an HMAC 'signature' keyed with the RSA public key."""
    signing = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}." \
              f"{b64(json.dumps(payload).encode())}"
    sig = hmac.new(PUBLIC_PEM, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


class Env:
    def __init__(self, gw: Gateway, node: BackendNode, keys: dict[str, str]) -> None:
        self.gw, self.node, self.keys = gw, node, keys
        self.url = f"http://127.0.0.1:{gw.server.port}"


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    (tmp_path / "pub.pem").write_bytes(PUBLIC_PEM)
    gw = await start_gateway(tmp_path, auth="on", jwt_public_key_file=tmp_path / "pub.pem",
                             jwt_algorithms=["RS256"], jwt_audience=AUD, jwt_issuer=ISS)
    node = await start_fake_node()
    gw.pool.upsert(Registration(id="n", address=f"127.0.0.1:{node.server.port}",
                                metrics_port=6100, models=["fake-model", "other"],
                                lease_seconds=60))
    store = gw.security.store
    assert store is not None
    keys = {}
    for name, scope, models in [("admin", "admin", None), ("user", "user", None),
                                ("user2", "user", None), ("other-only", "user", ["other"]),
                                ("revoked", "user", None)]:
        keys[name], row = await create_key(store, name=name, scope=scope, models=models)
        keys[f"{name}.id"] = row.id
    await store.keys.revoke(keys["revoked.id"])
    await gw.security.keys.refresh()
    yield Env(gw, node, keys)
    await node.drain()
    await gw.drain()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


NEGATIVE = [
    pytest.param(lambda e: {}, id="missing"),
    pytest.param(lambda e: {"authorization": "Bearer"}, id="empty"),
    pytest.param(lambda e: {"authorization": "Basic dXNlcjpwYXNz"}, id="basic-auth"),
    pytest.param(lambda e: bearer("garbled-key"), id="garbled"),
    pytest.param(lambda e: bearer(e.keys["user"][:-4] + "AAAA"), id="wrong-secret"),
    pytest.param(lambda e: bearer(e.keys["revoked"]), id="revoked"),
    pytest.param(lambda e: bearer("inf_' OR '1'='1"), id="sql-or"),
    pytest.param(lambda e: bearer(f"inf_{e.keys['user.id']}_x'; DROP TABLE inferno_api_keys;--"),
                 id="sql-drop"),
    pytest.param(lambda e: bearer("inf_%_%"), id="sql-wildcards"),
    pytest.param(lambda e: bearer(unsigned(claims())), id="jwt-alg-none"),
    pytest.param(lambda e: bearer(hs256_with_public_key(claims())), id="jwt-hs256-public-key"),
    pytest.param(lambda e: bearer(rs256(claims(exp=int(time.time()) - 120))), id="jwt-expired"),
    pytest.param(lambda e: bearer(rs256(claims(aud="someone-else"))), id="jwt-wrong-audience"),
    pytest.param(lambda e: bearer(rs256(claims(iss="https://evil.test"))), id="jwt-wrong-issuer"),
    pytest.param(lambda e: bearer(rs256({k: v for k, v in claims().items() if k != "exp"})),
                 id="jwt-no-exp"),
    pytest.param(lambda e: bearer(rs256(claims())[:-6] + "AAAAAA"), id="jwt-bad-signature"),
]


@pytest.mark.parametrize("headers", NEGATIVE)
async def test_bad_credentials_are_401_and_never_echoed(env: Env, headers: Any) -> None:
    h = headers(env)
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{env.url}/v1/completions", json=BODY, headers=h)
        models = await http.get(f"{env.url}/v1/models", headers=h)
    assert r.status_code == 401 and models.status_code == 401
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
    credential = h.get("authorization", "").partition(" ")[2]
    assert not credential or credential not in r.text
    assert (await env.gw.security.store.keys.count_active()) == 4  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "token",
    [pytest.param(lambda e: e.keys["user"], id="api-key"),
     pytest.param(lambda e: rs256(claims()), id="jwt-rs256")],
)
async def test_valid_credentials_pass(env: Env, token: Any) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{env.url}/v1/completions", json=BODY, headers=bearer(token(env)))
    assert r.status_code == 200, r.text


async def test_scopes_and_ownership(env: Env) -> None:
    k = env.keys
    async with httpx.AsyncClient() as http:
        async def get(path: str, key: str) -> httpx.Response:
            return await http.get(f"{env.url}{path}", headers=bearer(key))

        assert (await get("/v1/admin/keys", k["user"])).status_code == 403
        listed = await get("/v1/admin/keys", k["admin"])
        assert listed.status_code == 200 and "key_hash" not in listed.text
        assert k["user"] not in listed.text
        assert (await get(f"/v1/usage?key_id={k['user2.id']}", k["user"])).status_code == 403
        assert (await get(f"/v1/requests?key_id={k['user2.id']}", k["user"])).status_code == 403
        assert (await get("/v1/usage", k["user"])).status_code == 200
        assert (await get(f"/v1/usage?key_id={k['user2.id']}", k["admin"])).status_code == 200
        jwt_admin = rs256(claims(scope="inferno:admin"))
        assert (await get("/v1/admin/keys", jwt_admin)).status_code == 200
        assert (await get("/v1/admin/keys", rs256(claims()))).status_code == 403
        r = await http.post(f"{env.url}/v1/completions", json=BODY,
                            headers=bearer(k["other-only"]))
        assert r.status_code == 403 and r.json()["error"]["param"] == "model"
        created = await http.post(f"{env.url}/v1/admin/keys", json={"name": "new", "rpm": 5},
                                  headers=bearer(k["admin"]))
        assert created.status_code == 201
        new_key = created.json()["key"]
        r = await http.post(f"{env.url}/v1/completions", json=BODY, headers=bearer(new_key))
        assert r.status_code == 200
        revoked = await http.delete(f"{env.url}/v1/admin/keys/{created.json()['id']}",
                                    headers=bearer(k["admin"]))
        assert revoked.status_code == 200
        r = await http.post(f"{env.url}/v1/completions", json=BODY, headers=bearer(new_key))
        assert r.status_code == 401


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"secret": "s", "algorithms": ["none"]}, "none", id="alg-none"),
        pytest.param({"secret": "s", "algorithms": ["RS256"]}, "RS256", id="secret-with-rs"),
        pytest.param({"public_key_file": Path("/nonexistent.pem"), "algorithms": ["HS256"]},
                     "HS256", id="public-key-with-hs"),
        pytest.param({}, "exactly one", id="no-key"),
    ],
)
def test_jwt_config_rejects_confusable_algorithms(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        JwtVerifier(**kwargs)


def test_hs256_tokens_map_claims_to_limits() -> None:
    v = JwtVerifier(secret="k" * 32, audience=AUD)
    token = jwt.encode({"sub": "bob", "aud": AUD, "exp": int(time.time()) + 60, "rpm": 7,
                        "models": ["m"]}, "k" * 32, algorithm="HS256")
    p = v.verify(token)
    assert p is not None and p.key_id == "jwt:bob" and p.rpm == 7 and p.models == {"m"}
    assert v.verify(token) is p  # cached until it expires
    assert JwtVerifier(secret="other" * 8, audience=AUD).verify(token) is None


async def test_public_bind_without_auth_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without"):
        await start_gateway(tmp_path, host="0.0.0.0", node_tokens=["t"])

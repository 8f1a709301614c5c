"""``inferno.client``: a typed Python client for Inferno's admin API, sync and async.

    from inferno.client import Client

    with Client("http://127.0.0.1:8080", api_key="inf_...") as admin:
        key = admin.create_key("ci", scope="user", rpm=600)   # key.key: shown once
        admin.deploy_model("smol:v2", replace="smol:v1")
        for entry in admin.audit(action="key").entries: ...
        admin.cancel_batch("batch_...")                       # batches of every key

:class:`AsyncClient` has the same methods, awaited. Error answers raise the classes of
:mod:`inferno.core.errors` (``AuthenticationError``, ``PermissionDenied``, ``NotFound``...)
with the server's message and ``param``; a proxy that cannot be reached raises
``UpstreamConnectError``. Inference itself belongs to the official SDKs: point
``openai.OpenAI(base_url="http://127.0.0.1:8080/v1")`` or ``anthropic.Anthropic(
base_url="http://127.0.0.1:8080")`` at the proxy.

The router's state is on the proxy's ops port (``ops_url``, default: port 6100 of the
proxy's host) and the governator's on its own (``governator_url``, default port 6300).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2

from inferno.client import _calls as c
from inferno.client._calls import ApiKey, AuditPage, Call, CreatedKey, NodeResult, Usage
from inferno.core.errors import InfernoError, UpstreamConnectError, UpstreamTimeout

__all__ = ["ApiKey", "AsyncClient", "AuditPage", "Client", "CreatedKey", "NodeResult", "Usage"]

T = TypeVar("T")


class _Base:
    def __init__(self, base_url: str = "http://127.0.0.1:8080", *, api_key: str | None = None,
                 ops_url: str | None = None, governator_url: str | None = None,
                 timeout: float = 900.0) -> None:
        """``timeout``: model loads and deploys may take minutes (a large file from disk)."""
        u = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        self.base_url = f"{u.scheme}://{u.netloc}{u.path.rstrip('/').removesuffix('/v1')}"
        self.ops_url = (ops_url or f"{u.scheme}://{u.hostname}:6100").rstrip("/")
        self.governator_url = (governator_url or f"{u.scheme}://{u.hostname}:6300").rstrip("/")
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout

    def _url(self, call: Call[Any]) -> str:
        base = self.governator_url if call.governator else (
            self.ops_url if call.ops else self.base_url)
        return base + call.path

    @staticmethod
    def _answer(call: Call[T], resp: httpx2.Response) -> T:
        try:
            body = resp.json()
        except ValueError:
            body = {"error": {"message": resp.text[:200]}}
        if resp.status_code >= 400:
            after = resp.headers.get("retry-after")
            raise c.error_from(resp.status_code, body,
                               float(after) if after and after.isdigit() else None)
        return call.parse(body)

    @staticmethod
    def _failed(url: str, exc: httpx2.TransportError) -> InfernoError:
        if isinstance(exc, httpx2.TimeoutException):
            return UpstreamTimeout(f"{url}: no answer in time")
        return UpstreamConnectError(f"cannot reach {url}: {exc}")


class Client(_Base):
    """The admin API, blocking. Use as a context manager (or call :meth:`close`)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self._http = httpx2.Client(timeout=self._timeout, headers=self._headers)

    def _run(self, call: Call[T]) -> T:
        url = self._url(call)
        try:
            resp = self._http.request(call.method, url, params=call.params, json=call.json)
        except httpx2.TransportError as exc:
            raise self._failed(url, exc) from exc
        return self._answer(call, resp)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def list_keys(self) -> list[ApiKey]:
        return self._run(c.list_keys())

    def create_key(self, name: str, *, scope: str = "user", models: list[str] | None = None,
                   rpm: int | None = None, tpm: int | None = None) -> CreatedKey:
        return self._run(c.create_key(name, scope, models, rpm, tpm))

    def revoke_key(self, key_id: str) -> bool:
        return self._run(c.revoke_key(key_id))

    def usage(self, *, since: str | None = None, until: str | None = None,
              key_id: str | None = None) -> list[Usage]:
        return self._run(c.usage(since, until, key_id))

    def requests(self, *, limit: int = 100, key_id: str | None = None) -> list[dict[str, Any]]:
        return self._run(c.requests(limit, key_id))

    def audit(self, *, actor: str | None = None, action: str | None = None,
              target: str | None = None, since: float | None = None,
              until: float | None = None, before: int | None = None,
              limit: int = 100) -> AuditPage:
        return self._run(c.audit(actor, action, target, since, until, before, limit))

    def loaded_models(self) -> list[dict[str, Any]]:
        return self._run(c.models_ps())

    def load_model(self, model: str, *, node: str | None = None,
                   keep_alive: str | float | None = None) -> list[NodeResult]:
        return self._run(c.models_change("load", model, node=node, keep_alive=keep_alive))

    def unload_model(self, model: str, *, node: str | None = None) -> list[NodeResult]:
        return self._run(c.models_change("unload", model, node=node))

    def deploy_model(self, model: str, *, replace: str,
                     node: str | None = None) -> list[NodeResult]:
        return self._run(c.models_change("deploy", model, replace=replace, node=node))

    def batches(self, *, after: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Batch objects, newest first (an admin key sees every key's)."""
        return self._run(c.list_batches(after, limit))

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._run(c.get_batch(batch_id))

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._run(c.cancel_batch(batch_id))

    def router_state(self) -> dict[str, Any]:
        return self._run(c.router_state())

    def governator_state(self) -> dict[str, Any]:
        return self._run(c.governator_state())


class AsyncClient(_Base):
    """The admin API for asyncio: the same methods as :class:`Client`, awaited."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self._http = httpx2.AsyncClient(timeout=self._timeout, headers=self._headers)

    async def _run(self, call: Call[T]) -> T:
        url = self._url(call)
        try:
            resp = await self._http.request(call.method, url, params=call.params,
                                            json=call.json)
        except httpx2.TransportError as exc:
            raise self._failed(url, exc) from exc
        return self._answer(call, resp)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None
                        ) -> None:
        await self.close()

    async def list_keys(self) -> list[ApiKey]:
        return await self._run(c.list_keys())

    async def create_key(self, name: str, *, scope: str = "user",
                         models: list[str] | None = None, rpm: int | None = None,
                         tpm: int | None = None) -> CreatedKey:
        return await self._run(c.create_key(name, scope, models, rpm, tpm))

    async def revoke_key(self, key_id: str) -> bool:
        return await self._run(c.revoke_key(key_id))

    async def usage(self, *, since: str | None = None, until: str | None = None,
                    key_id: str | None = None) -> list[Usage]:
        return await self._run(c.usage(since, until, key_id))

    async def requests(self, *, limit: int = 100,
                       key_id: str | None = None) -> list[dict[str, Any]]:
        return await self._run(c.requests(limit, key_id))

    async def audit(self, *, actor: str | None = None, action: str | None = None,
                    target: str | None = None, since: float | None = None,
                    until: float | None = None, before: int | None = None,
                    limit: int = 100) -> AuditPage:
        return await self._run(c.audit(actor, action, target, since, until, before, limit))

    async def loaded_models(self) -> list[dict[str, Any]]:
        return await self._run(c.models_ps())

    async def load_model(self, model: str, *, node: str | None = None,
                         keep_alive: str | float | None = None) -> list[NodeResult]:
        return await self._run(c.models_change("load", model, node=node,
                                               keep_alive=keep_alive))

    async def unload_model(self, model: str, *, node: str | None = None) -> list[NodeResult]:
        return await self._run(c.models_change("unload", model, node=node))

    async def deploy_model(self, model: str, *, replace: str,
                           node: str | None = None) -> list[NodeResult]:
        return await self._run(c.models_change("deploy", model, replace=replace, node=node))

    async def batches(self, *, after: str | None = None,
                      limit: int = 20) -> list[dict[str, Any]]:
        return await self._run(c.list_batches(after, limit))

    async def batch(self, batch_id: str) -> dict[str, Any]:
        return await self._run(c.get_batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return await self._run(c.cancel_batch(batch_id))

    async def router_state(self) -> dict[str, Any]:
        return await self._run(c.router_state())

    async def governator_state(self) -> dict[str, Any]:
        return await self._run(c.governator_state())

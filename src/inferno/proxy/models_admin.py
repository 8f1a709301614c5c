"""Model management through the proxy (admin scope): load and unload models on nodes.

``POST /v1/models/load``   ``{"model": "...", "node": "id"?, "keep_alive": "5m"?}``: on every
                           registered node that lists the model (loaded or available), or
                           on the one ``node`` names
``POST /v1/models/unload`` ``{"model": "...", "node": "id"?}``: on every node that has it loaded
``GET /v1/models/ps``      every node's loaded models, each row with its ``node``
``POST /v1/models/deploy`` ``{"model": "NAME:NEW", "replace": "NAME:OLD", "node": "id"?}``:
                           a hot swap on every node that has ``replace`` loaded (or on the one
                           ``node`` names): each loads the new version beside the old one,
                           moves the old one's names to it, and unloads the old one once
                           its requests have finished. Rollback: deploy the old tag again.

Each answer is a list with one result per node: its HTTP status and the node's answer
(or error). Every load, unload and deploy is recorded in the audit trail with the admin
key that asked and each node's outcome. The calls to the nodes carry the proxy's node
token, the credential nodes share with it; a node that refuses the first token is tried
with the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from inferno.core.errors import (
    InfernoError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
)
from inferno.core.validation import json_object
from inferno.net import HttpClient, Request, Response
from inferno.proxy.pool import Node, Pool
from inferno.proxy.security.auth import Authenticator, require_admin
from inferno.store.audit import AuditEvent

ROUTES = {"/v1/models/load": "POST", "/v1/models/unload": "POST", "/v1/models/ps": "GET",
          "/v1/models/deploy": "POST"}


class ModelsAdmin:
    def __init__(
        self,
        auth: Authenticator,
        pool: Pool,
        client: HttpClient,
        *,
        node_tokens: list[str],
        timeout: float = 600.0,
        audit: Callable[[AuditEvent], None] = lambda event: None,
    ) -> None:
        self._auth = auth
        self._pool = pool
        self._client = client
        self._tokens = node_tokens
        self._timeout = timeout  # a load may take minutes (a large model from disk)
        self._audit = audit

    def owns(self, path: str) -> bool:
        return path.rstrip("/") in ROUTES

    async def handle(self, req: Request) -> Response:
        principal = self._auth.authenticate(req)
        require_admin(principal)
        path = req.path.rstrip("/")
        if req.method != ROUTES[path]:
            raise MethodNotAllowed(f"{req.method} is not allowed on {path}; use {ROUTES[path]}.")
        nodes = self._pool.nodes()
        if path == "/v1/models/ps":
            results = await asyncio.gather(*(self._call(n, "GET", path, b"") for n in nodes))
            rows = [
                {"node": n.id, **row}
                for n, (status, body) in zip(nodes, results, strict=True)
                if status == 200
                for row in body.get("data", [])
            ]
            return Response.json({"object": "list", "data": rows})
        data = json_object(req.body, empty=True)
        model, node_id = data.get("model"), data.get("node")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' must be a model name.", param="model")
        if node_id is not None:
            nodes = [n for n in nodes if n.id == node_id]
            if not nodes:
                raise NotFound(f"No registered node has the id '{node_id}'.", param="node")
        if path == "/v1/models/deploy":
            replace = data.get("replace")
            if not isinstance(replace, str) or not replace:
                raise InvalidRequest("'replace' must name the model being replaced.",
                                     param="replace")
            targets = [n for n in nodes if replace in n.loaded]
            if not targets:
                raise ModelNotFound(f"No registered node has '{replace}' loaded.",
                                    param="replace")
        elif path == "/v1/models/load":
            targets = [n for n in nodes if model in n.loaded or model in n.available]
            if not targets and node_id is not None:
                targets = nodes  # a model that node does not list yet (pulled since)
        else:
            targets = [n for n in nodes if model in n.loaded]
        if not targets:
            where = "has it loaded" if path.endswith("unload") else "can load it"
            raise ModelNotFound(f"No registered node {where}: '{model}'.", param="model")
        body = orjson.dumps({k: v for k, v in data.items() if k != "node"})
        results = await asyncio.gather(*(self._call(n, "POST", path, body) for n in targets))
        failed = [n.id for n, (status, _) in zip(targets, results, strict=True) if status != 200]
        self._audit(AuditEvent(
            f"model.{path.rsplit('/', 1)[-1]}", model[:256], principal.key_id or "local",
            f"failed on {', '.join(failed)}"[:500] if failed else "ok",
            req.header("x-request-id"),
            {"nodes": [n.id for n in targets], **({"replace": data["replace"]}
                                                   if "replace" in data else {})}))
        return Response.json(
            {
                "object": "list",
                "model": model,
                "data": [
                    {
                        "node": n.id,
                        "status": status,
                        **(
                            {"result": answer}
                            if status == 200
                            else {"error": answer.get("error", answer)}
                        ),
                    }
                    for n, (status, answer) in zip(targets, results, strict=True)
                ],
            }
        )

    async def _call(
        self, node: Node, method: str, path: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """``(status, JSON answer)`` of one node; failures to reach it are a 502 result."""
        status, answer = 502, dict[str, Any]()
        tokens: list[str | None] = [*self._tokens] or [None]
        for token in tokens:
            headers = [(b"content-type", b"application/json")]
            if token:
                headers.append((b"authorization", b"Bearer " + token.encode()))
            try:
                async with asyncio.timeout(self._timeout):
                    async with await self._client.request(
                        node.host,
                        node.port,
                        method,
                        path,
                        headers=headers,
                        body=body,
                        connect_timeout=5.0,
                        header_timeout=self._timeout,
                    ) as resp:
                        raw = await resp.read()
                status = resp.status
                try:
                    loaded = orjson.loads(raw)
                    answer = loaded if isinstance(loaded, dict) else {"data": loaded}
                except orjson.JSONDecodeError:
                    answer = {"message": raw[:200].decode("utf-8", "replace")}
            except (InfernoError, OSError, TimeoutError) as exc:
                message = exc.message if isinstance(exc, InfernoError) else str(exc)
                return 502, {"message": f"node unreachable: {message or type(exc).__name__}"}
            if status != 401:
                break
        return status, answer


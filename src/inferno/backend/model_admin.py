"""The node's model management on its API port: load, unload, and what is loaded.

``POST /v1/models/load``   ``{"model": "...", "keep_alive": "5m"}``: load (or keep) a model
                           this node knows; answers its ``ps`` row once it is loaded
``POST /v1/models/unload`` ``{"model": "..."}``: unload after its requests finish
``GET /v1/models/ps``      the loaded models: name, size, keep_alive, expires_at,
                           in_flight, last_used
``POST /v1/models/deploy`` ``{"model": "NAME:NEW", "replace": "NAME:OLD"}``: hot swap; loads
                           the new version, moves the old one's names to it, unloads the
                           old one once its requests have finished; answers both ``ps`` rows

Who may call: with a node token configured (``node_token``, the credential the node and
the proxy share), only ``Authorization: Bearer <node token>``; without one, only clients
on a loopback address. Inference routes stay open as before.
"""

from __future__ import annotations

import hmac
import ipaddress

from inferno.backend.models import LoadedModels
from inferno.core.errors import AuthenticationError, InvalidRequest, PermissionDenied
from inferno.core.settings import parse_duration
from inferno.core.validation import json_object
from inferno.net import Request, Response

ADMIN_ROUTES = {"/v1/models/load": "POST", "/v1/models/unload": "POST", "/v1/models/ps": "GET",
                "/v1/models/deploy": "POST"}


def _loopback(client: tuple[str, int] | None) -> bool:
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client[0].split("%")[0]).is_loopback
    except ValueError:
        return client[0] == "localhost"


class ModelAdmin:
    def __init__(self, models: LoadedModels, *, token: str | None) -> None:
        self._models = models
        self._token = token.encode() if token else None

    def _authorize(self, req: Request) -> None:
        if self._token is None:
            if not _loopback(req.client):
                raise PermissionDenied(
                    "Model management on this node is open to loopback "
                    "clients only (configure node_token to allow more)."
                )
            return
        value = req.header("authorization") or ""
        scheme, _, credential = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), self._token
        ):
            raise AuthenticationError(
                "Model management needs the node token as 'Authorization: Bearer <token>'."
            )

    async def handle(self, req: Request, path: str) -> Response:
        self._authorize(req)
        if path == "/v1/models/ps":
            rows = [e.row() for e in self._models.entries if e.state != "unloaded"]
            return Response.json({"object": "list", "data": rows})
        data = json_object(req.body, empty=True)
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' must be a model name.", param="model")
        if path == "/v1/models/deploy":
            replace = data.get("replace")
            if not isinstance(replace, str) or not replace:
                raise InvalidRequest("'replace' must name the model being replaced.",
                                     param="replace")
            new, old = await self._models.deploy(model, replace)
            return Response.json({"model": new.row(), "replaced": old.row()})
        if path == "/v1/models/load":
            keep_alive = None
            if data.get("keep_alive") is not None:
                try:
                    keep_alive = parse_duration(data["keep_alive"])
                except ValueError as exc:
                    raise InvalidRequest(str(exc), param="keep_alive") from exc
            self._models.add(model)  # one pulled after the node started needs no restart
            entry = await self._models.load(model, keep_alive=keep_alive)
            return Response.json(entry.row())
        was_loaded = await self._models.unload(model)
        entry = self._models.find(model, refs=True)
        return Response.json(
            {"name": entry.name, "model": entry.ref, "unloaded": was_loaded, "status": entry.state}
        )


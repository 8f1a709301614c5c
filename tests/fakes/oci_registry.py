"""A fake OCI distribution registry (as Ollama's registry speaks it) on 127.0.0.1.

- ``/v2/...`` without ``Authorization: Bearer <valid token>`` answers ``401`` with
  ``WWW-Authenticate: Bearer realm="<url>/token",service="fake-registry",
  scope="repository:NS/NAME:pull"``; ``GET /token?service=&scope=`` returns
  ``{"token", "access_token", "expires_in"}``.
- ``GET|HEAD /v2/NS/NAME/manifests/{tag|sha256:...}``: the manifest bytes as stored, with
  ``Content-Type`` (its media type) and ``Docker-Content-Digest``; a request whose ``Accept``
  does not admit that media type gets 404 ``MANIFEST_UNKNOWN``, as registries do.
- ``GET|HEAD /v2/NS/NAME/blobs/sha256:...`` with ``Range`` support.
- Knobs: ``auth=False`` (no challenge), ``tokens_valid=False`` (tokens are refused).
- Errors are ``{"errors": [{"code", "message", "detail"}]}``. Every request is logged.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.hf_hub import Logged, ranged

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    def __init__(self, *, auth: bool = True) -> None:
        self.auth = auth
        self.tokens: set[str] = set()  # the tokens the registry accepts
        self.issued: list[str] = []  # every token the token service handed out
        self.tokens_valid = True  # False: hand out tokens the registry then refuses
        self.requests: list[Logged] = []
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}  # (repo, tag or digest) -> bytes
        self._runner: web.AppRunner | None = None
        self.url = self.host = ""

    def add_model(
        self,
        repository: str,
        tag: str,
        layers: list[tuple[str, bytes]],
        *,
        config: bytes = b'{"model_format":"gguf"}',
        media_type: str = DOCKER_MANIFEST,
    ) -> bytes:
        """Store blobs and a manifest for ``repository:tag``; return the manifest bytes."""

        def entry(mt: str, data: bytes) -> dict[str, Any]:
            self.blobs[digest_of(data)] = data
            return {"mediaType": mt, "digest": digest_of(data), "size": len(data)}

        manifest = orjson.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": entry(CONFIG_TYPE, config),
                "layers": [entry(mt, data) for mt, data in layers],
            }
        )
        self.manifests[(repository, tag)] = manifest
        self.manifests[(repository, digest_of(manifest))] = manifest
        return manifest

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_get("/v2/", self._base)
        app.router.add_get("/v2/{ns}/{name}/manifests/{ref}", self._manifest)
        app.router.add_get("/v2/{ns}/{name}/blobs/{digest}", self._blob)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _log(self, request: web.Request) -> None:
        self.requests.append(
            Logged("registry", request.method, request.path_qs, dict(request.headers))
        )

    def _challenge(self, request: web.Request, repository: str | None) -> web.Response | None:
        if not self.auth:
            return None
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.tokens:
            return None
        scope = f',scope="repository:{repository}:pull"' if repository else ""
        return _errors(
            401,
            "UNAUTHORIZED",
            "authentication required",
            headers={
                "WWW-Authenticate": (
                    f'Bearer realm="{self.url}/token",service="fake-registry"{scope}'
                )
            },
        )

    async def _token(self, request: web.Request) -> web.Response:
        self._log(request)
        if request.query.get("service") != "fake-registry" or "scope" not in request.query:
            return _errors(400, "DENIED", "service and scope are required")
        token = secrets.token_urlsafe(24)
        self.issued.append(token)
        if self.tokens_valid:
            self.tokens.add(token)
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})

    async def _base(self, request: web.Request) -> web.Response:
        self._log(request)
        return self._challenge(request, None) or web.json_response({})

    async def _manifest(self, request: web.Request) -> web.Response:
        self._log(request)
        repository = f"{request.match_info['ns']}/{request.match_info['name']}"
        refusal = self._challenge(request, repository)
        if refusal is not None:
            return refusal
        raw = self.manifests.get((repository, request.match_info["ref"]))
        if raw is None:
            return _errors(404, "MANIFEST_UNKNOWN", "manifest unknown")
        media_type = orjson.loads(raw)["mediaType"]
        accept = request.headers.get("Accept", "*/*")
        if "*/*" not in accept and media_type not in accept:
            return _errors(404, "MANIFEST_UNKNOWN", f"no manifest of the accepted types {accept}")
        return web.Response(
            body=raw, headers={"Content-Type": media_type, "Docker-Content-Digest": digest_of(raw)}
        )

    async def _blob(self, request: web.Request) -> web.Response:
        self._log(request)
        repository = f"{request.match_info['ns']}/{request.match_info['name']}"
        refusal = self._challenge(request, repository)
        if refusal is not None:
            return refusal
        data = self.blobs.get(request.match_info["digest"])
        if data is None:
            return _errors(404, "BLOB_UNKNOWN", "blob unknown to registry")
        return ranged(
            request,
            data,
            {
                "Docker-Content-Digest": request.match_info["digest"],
                "Content-Type": "application/octet-stream",
            },
        )


def _errors(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    return web.json_response(body, status=status, headers=headers)

"""The OCI distribution pieces ``ollama://`` needs: bearer challenges, manifests, layers.

A registry that wants a token answers ``401`` with ``WWW-Authenticate: Bearer realm="...",
service="...",scope="..."``; an anonymous ``GET realm?service=...&scope=...`` returns
``{"token": ...}`` (or ``access_token``), sent back as ``Authorization: Bearer``. A manifest
lists a config blob and layers, each a ``{mediaType, digest, size}``; Ollama's layer media
types say what each blob is (weights, chat template, parameters, licence, system prompt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from inferno.core.errors import ModelSourceError
from inferno.models.remote import Remote
from inferno.models.sources import _registry as reg

# Ollama's media types and the file each becomes in the store.
LAYER_FILES = {
    "application/vnd.ollama.image.model": "model.gguf",
    "application/vnd.ollama.image.projector": "projector.gguf",
    "application/vnd.ollama.image.adapter": "adapter.gguf",
    "application/vnd.ollama.image.template": "template",
    "application/vnd.ollama.image.params": "params.json",
    "application/vnd.ollama.image.system": "system",
    "application/vnd.ollama.image.license": "license",
    "application/vnd.ollama.image.messages": "messages.json",
}
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_PARAM = re.compile(r'(\w+)="([^"]*)"')
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    realm: str
    service: str | None
    scope: str | None

    @classmethod
    def parse(cls, header: str) -> AuthChallenge | None:
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        params = dict(_PARAM.findall(rest))
        if not params.get("realm"):
            return None
        return cls(params["realm"], params.get("service"), params.get("scope"))

    async def fetch_token(self, http: Any, ref: str, default_scope: str) -> str:
        query = {"scope": self.scope or default_scope}
        if self.service:
            query["service"] = self.service
        resp = await reg.send(http, ref, "GET", self.realm, params=query)
        if resp.status_code != 200:
            raise ModelSourceError(
                f"{ref}: the registry's token service refused a pull token ({reg.answer(resp)})",
                retry_after=reg.retry_after(resp),
            )
        try:
            body = resp.json()
        except ValueError as exc:
            raise ModelSourceError(f"{ref}: the token service's answer is not JSON") from exc
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ModelSourceError(f"{ref}: the token service's answer holds no token")
        return token


def parse_manifest(ref: str, raw: bytes, content_type: str) -> dict[str, Any]:
    try:
        manifest = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ModelSourceError(f"{ref}: the manifest is not JSON") from exc
    if not isinstance(manifest, dict):
        raise ModelSourceError(f"{ref}: the manifest is not an object")
    media_type = manifest.get("mediaType") or content_type.split(";")[0].strip()
    if media_type in _INDEX_TYPES:
        raise ModelSourceError(
            f"{ref}: the registry answered a multi-platform index "
            f"({media_type}), not a model manifest"
        )
    if not isinstance(manifest.get("layers"), list):
        raise ModelSourceError(f"{ref}: the manifest lists no layers")
    return manifest


def layer_remotes(
    ref: str, manifest: dict[str, Any], blobs_url: str, headers: dict[str, str]
) -> tuple[Remote, ...]:
    """The config blob and every layer, as files named after their media type."""
    entries: list[tuple[dict[str, Any], str]] = []
    config = manifest.get("config")
    if isinstance(config, dict):
        entries.append((config, "config.json"))
    for layer in manifest["layers"]:
        media = layer.get("mediaType", "") if isinstance(layer, dict) else ""
        entries.append((layer, LAYER_FILES.get(media) or _fallback_name(media)))
    seen: dict[str, int] = {}
    remotes = []
    for entry, filename in entries:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
        size = entry.get("size")
        if m is None or not isinstance(size, int):
            raise ModelSourceError(
                f"{ref}: a manifest entry has no sha256 digest or size: {entry!r}"
            )
        seen[filename] = seen.get(filename, 0) + 1
        if seen[filename] > 1:  # e.g. a model under two licences
            filename = f"{filename}-{seen[filename]}"
        remotes.append(
            Remote(
                url=blobs_url + m.group(0),
                filename=filename,
                size=size,
                sha256=m.group(1),
                media_type=entry.get("mediaType") or "application/octet-stream",
                headers=dict(headers),
            )
        )
    return tuple(remotes)


def _fallback_name(media_type: str) -> str:
    # An unknown kind still comes along, named after its media type's last word.
    word = re.sub(r"[^a-z0-9]+", "-", media_type.rsplit(".", 1)[-1].lower()).strip("-")
    return word or "blob"

"""``ollama://[HOST/]NS/NAME[:TAG][@sha256:HEX]``: models on an Ollama (OCI) registry.

Names parse as Ollama parses them: three parts are host, namespace and name; two are
namespace and name; one is a name. Defaults: host ``registry.ollama.ai``, namespace
``library``, tag ``latest``. Resolution fetches ``/v2/NS/NAME/manifests/TAG`` (Docker v2 or
OCI manifest); a ``401`` with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``
is answered by fetching an anonymous token from the realm and asking once more. Each layer
becomes a :class:`Remote` at ``/v2/NS/NAME/blobs/<digest>`` with the layer's digest and size
and the bearer token in its headers; the config blob comes along as ``config.json``. The
revision is the manifest's own digest (sha256 of its bytes). ``@sha256:HEX`` pins it: the
manifest is fetched by that digest and refused unless its bytes hash to it, so a moved tag
cannot change what is pulled (the tag, when given, only names the model in the store).

Registries are reached over HTTPS. ``INFERNO_OLLAMA_INSECURE_HOSTS`` (comma-separated
``host[:port]``, read when the source is built; e.g. ``127.0.0.1:5000``) names hosts spoken
to over plain HTTP instead: a local registry, or a test's fake one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from inferno.core.errors import ModelIntegrityError, ModelNotFound, ModelSourceError
from inferno.models.remote import Remote, Resolved
from inferno.models.sources import _registry as reg
from inferno.models.sources._oci import AuthChallenge, layer_remotes, parse_manifest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)


@dataclass(frozen=True, slots=True)
class OllamaRef:
    host: str
    namespace: str
    name: str
    tag: str
    digest: str | None = None  # a pinned manifest digest, lowercase hex

    @property
    def reference(self) -> str:
        """What the manifest is fetched by: the pinned digest, else the tag."""
        return f"sha256:{self.digest}" if self.digest else self.tag

    @property
    def repository(self) -> str:
        return f"{self.namespace}/{self.name}"


_PIN = re.compile(r"@sha256:([0-9a-fA-F]{64})$")


def parse(ref: str) -> OllamaRef:
    body = ref.removeprefix("ollama://")
    pin = _PIN.search(body)
    if pin is not None:
        body = body[: pin.start()]
    elif "@" in body:
        raise ModelSourceError(f"{ref}: a pin is written @sha256:<64 hex digits>")
    parts = body.split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ModelSourceError(f"{ref}: expected ollama://[HOST/]NS/NAME[:TAG]")
    name, _, tag = parts[-1].partition(":")
    host = parts[0] if len(parts) == 3 else DEFAULT_HOST
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    if not name:
        raise ModelSourceError(f"{ref}: the model name is empty")
    digest = pin.group(1).lower() if pin is not None else None
    default = f"sha256-{digest[:12]}" if digest else DEFAULT_TAG
    return OllamaRef(host.lower(), namespace, name, tag or default, digest)


class OllamaSource:
    """Resolves ``ollama://`` references against the registry each names."""

    def __init__(
        self, insecure_hosts: Iterable[str] | None = None, timeout: float = reg.TIMEOUT
    ) -> None:
        if insecure_hosts is None:
            insecure_hosts = os.environ.get("INFERNO_OLLAMA_INSECURE_HOSTS", "").split(",")
        self.insecure_hosts = frozenset(h.strip().lower() for h in insecure_hosts if h.strip())
        self.timeout = timeout

    def handles(self, ref: str) -> bool:
        return ref.startswith("ollama://")

    def base_url(self, host: str) -> str:
        scheme = "http" if host in self.insecure_hosts else "https"
        return f"{scheme}://{host}/v2"

    async def resolve(self, ref: str) -> Resolved:
        r = parse(ref)
        what = f"{r.host}/{r.repository}:{r.tag}"
        url = f"{self.base_url(r.host)}/{r.repository}/manifests/{r.reference}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        async with reg.client(ref, self.timeout) as http:
            resp = await reg.send(http, ref, "GET", url, headers=headers)
            if resp.status_code == 401:
                challenge = AuthChallenge.parse(resp.headers.get("www-authenticate", ""))
                if challenge is None:
                    raise ModelSourceError(
                        f"{ref}: {r.host} asks for credentials this source "
                        f"cannot give ({reg.answer(resp)})"
                    )
                token = await challenge.fetch_token(http, ref, f"repository:{r.repository}:pull")
                headers["Authorization"] = f"Bearer {token}"
                resp = await reg.send(http, ref, "GET", url, headers=headers)
        if resp.status_code == 404:
            raise ModelNotFound(f"{ref}: {what} not found ({reg.answer(resp)})")
        if resp.status_code in (401, 403):
            raise ModelSourceError(f"{ref}: {r.host} refused {what} ({reg.answer(resp)})")
        if resp.status_code != 200:
            raise ModelSourceError(
                f"{ref}: {r.host} answered {what} with {reg.answer(resp)}",
                retry_after=reg.retry_after(resp),
            )
        digest = hashlib.sha256(resp.content).hexdigest()
        if r.digest is not None and digest != r.digest:
            raise ModelIntegrityError(
                f"{ref}: the registry's manifest hashes to sha256:{digest}, not the pinned "
                f"sha256:{r.digest}"
            )
        stated = resp.headers.get("docker-content-digest")
        if stated and stated.lower() != f"sha256:{digest}":
            raise ModelSourceError(
                f"{ref}: the manifest of {what} hashes to sha256:{digest}, "
                f"the registry states {stated}"
            )
        manifest = parse_manifest(ref, resp.content, resp.headers.get("content-type", ""))
        auth = {"Authorization": headers["Authorization"]} if "Authorization" in headers else {}
        blobs = f"{self.base_url(r.host)}/{r.repository}/blobs/"
        files: tuple[Remote, ...] = layer_remotes(ref, manifest, blobs, auth)
        return Resolved(
            name=f"{r.host}/{r.repository}",
            tag=r.tag,
            source=ref,
            revision=f"sha256:{digest}",
            files=files,
        )

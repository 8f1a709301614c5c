"""``hf://ORG/REPO[/FILE.gguf | :QUANT][@REVISION]``: GGUF files on a Hugging Face hub.

Resolution asks the hub's model API (``/api/models/{repo}/revision/{rev}?blobs=true``) for
the commit and the file list, picks the file (the one named, the ``.gguf`` whose name holds
the quant as a word, or the repo's only ``.gguf``; a split GGUF ``-00001-of-00003`` is all
its parts), then sends ``HEAD /{repo}/resolve/{commit}/{file}`` without following the CDN
redirect, which is where the hub states the LFS file's sha256 (``X-Linked-Etag``) and size
(``X-Linked-Size``). The download URL is that resolve URL pinned to the commit: a CDN URL is
signed and expires, the pinned one does not.

``HF_ENDPOINT`` (default ``https://huggingface.co``) and ``HF_TOKEN`` are read when the
source is built, as ``huggingface_hub`` does; the token travels as ``Authorization: Bearer``
in requests and in ``Remote.headers``, never in a message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from inferno.core.errors import ModelNotFound, ModelSourceError
from inferno.models.remote import Remote, Resolved
from inferno.models.sources import _registry as reg
from inferno.models.sources._hf_files import pick_files, tag_of

DEFAULT_ENDPOINT = "https://huggingface.co"
GGUF = "application/vnd.gguf"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_HUB_REDIRECTS = 5  # renamed repos answer with a same-host redirect


@dataclass(frozen=True, slots=True)
class HfRef:
    repo: str  # "org/name"
    file: str | None
    quant: str | None
    revision: str


def parse(ref: str) -> HfRef:
    body = ref.removeprefix("hf://")
    body, _, revision = body.partition("@")
    parts = body.split("/")
    if len(parts) < 2 or not all(parts):
        raise ModelSourceError(f"{ref}: expected hf://ORG/REPO[/FILE.gguf | :QUANT][@REVISION]")
    name, _, quant = parts[1].partition(":")
    if not name or (quant and len(parts) > 2):
        raise ModelSourceError(f"{ref}: give either /FILE or :QUANT, not both")
    return HfRef(
        f"{parts[0]}/{name}", "/".join(parts[2:]) or None, quant or None, revision or "main"
    )


class HfSource:
    """Resolves ``hf://`` references against one hub endpoint."""

    def __init__(
        self, endpoint: str | None = None, token: str | None = None, timeout: float = reg.TIMEOUT
    ) -> None:
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self._token = token if token is not None else (os.environ.get("HF_TOKEN") or None)
        self.timeout = timeout

    def handles(self, ref: str) -> bool:
        return ref.startswith("hf://")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def resolve(self, ref: str) -> Resolved:
        r = parse(ref)
        async with reg.client(ref, self.timeout) as http:
            url = f"{self.endpoint}/api/models/{r.repo}/revision/{quote(r.revision, safe='')}"
            resp = await reg.send(
                http,
                ref,
                "GET",
                url,
                params={"blobs": "true"},
                headers=self._headers(),
                follow_redirects=True,
            )
            self._check(ref, resp, f"repo {r.repo} at revision {r.revision}")
            info = _json(ref, resp)
            commit = info.get("sha")
            siblings = info.get("siblings")
            if not isinstance(commit, str) or not isinstance(siblings, list):
                raise ModelSourceError(f"{ref}: the hub's answer has no commit or file list")
            by_name = {
                s["rfilename"]: s
                for s in siblings
                if isinstance(s, dict) and isinstance(s.get("rfilename"), str)
            }
            chosen = pick_files(ref, r.file, r.quant, list(by_name))
            files = [await self._remote(http, ref, r.repo, commit, f, by_name[f]) for f in chosen]
        tag = r.quant or tag_of(chosen[0])
        return Resolved(
            name=f"hf.co/{r.repo}", tag=tag, source=ref, revision=commit, files=tuple(files)
        )

    async def _remote(
        self, http: Any, ref: str, repo: str, commit: str, file: str, sibling: dict[str, Any]
    ) -> Remote:
        url = f"{self.endpoint}/{repo}/resolve/{commit}/{quote(file)}"
        target = url
        for _ in range(_MAX_HUB_REDIRECTS):
            resp = await reg.send(
                http,
                ref,
                "HEAD",
                target,
                headers={**self._headers(), "Accept-Encoding": "identity"},
            )
            self._check(ref, resp, f"file {file} in {repo} at commit {commit}")
            location = resp.headers.get("location")
            if not resp.is_redirect or not location:
                break
            nxt = str(resp.url.join(location))
            if _origin(nxt) != _origin(self.endpoint):
                break  # the CDN: this redirect carries the file's metadata
            target = nxt
        if "x-repo-commit" not in resp.headers:
            raise ModelSourceError(
                f"{ref}: {self.endpoint} answered {file} without X-Repo-Commit: "
                "not a Hugging Face hub (check HF_ENDPOINT)"
            )
        lfs = sibling.get("lfs") if isinstance(sibling.get("lfs"), dict) else None
        sha256 = _sha256(resp.headers.get("x-linked-etag")) or (lfs or {}).get("sha256")
        if lfs and sha256 != lfs.get("sha256"):
            raise ModelSourceError(
                f"{ref}: the hub states two digests for {file}: "
                f"{sha256} (resolve) and {lfs.get('sha256')} (API)"
            )
        size = _int(resp.headers.get("x-linked-size"))
        if size is None and not resp.is_redirect:
            size = _int(resp.headers.get("content-length"))
        if size is None:
            size = _int(sibling.get("size"))
        return Remote(
            url=url,
            filename=file.rsplit("/", 1)[-1],
            size=size,
            sha256=sha256 if isinstance(sha256, str) else None,
            media_type=GGUF if file.endswith(".gguf") else "application/octet-stream",
            headers=self._headers(),
        )

    def _check(self, ref: str, resp: Any, what: str) -> None:
        """Translate the hub's refusals; its ``X-Error-Code`` tells a missing repo apart
        from a gated one even where both answer 401."""
        status = resp.status_code
        if status < 400:
            return
        code = resp.headers.get("x-error-code", "")
        detail = reg.answer(resp) if resp.request.method != "HEAD" else f"HTTP {status}"
        if code == "GatedRepo" or (status in (401, 403) and code != "RepoNotFound"):
            need = "is invalid or lacks access" if self._token else "is needed: set HF_TOKEN"
            raise ModelSourceError(
                f"{ref}: {what} is gated or private and a token {need} ({detail})"
            )
        if status == 404 or code in ("RepoNotFound", "RevisionNotFound", "EntryNotFound"):
            hint = "" if self._token else " (a private repo needs HF_TOKEN)"
            raise ModelNotFound(f"{ref}: {what} not found on {self.endpoint}{hint} ({detail})")
        raise ModelSourceError(
            f"{ref}: {self.endpoint} refused {what} ({detail})", retry_after=reg.retry_after(resp)
        )


def _json(ref: str, resp: Any) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError as exc:
        raise ModelSourceError(f"{ref}: the hub's answer is not JSON ({reg.answer(resp)})") from exc
    if not isinstance(data, dict):
        raise ModelSourceError(f"{ref}: the hub's answer is not an object")
    return data


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}".lower()


def _sha256(etag: str | None) -> str | None:
    """An LFS file's sha256 from its quoted ETag; anything else (a git blob id) is none."""
    value = etag.removeprefix("W/").strip('"').lower() if etag else ""
    return value if _HEX64.fullmatch(value) else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None

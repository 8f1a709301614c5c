"""A fake Hugging Face hub on 127.0.0.1 that answers as the real one does.

- ``GET /api/models/{org}/{name}/revision/{rev}[?blobs=true]``: ``sha`` and ``siblings``
  (with ``size``, ``blobId`` and, for LFS files, ``lfs: {sha256, size, pointerSize}``).
- ``HEAD|GET /{org}/{name}/resolve/{rev}/{path}``: every answer carries ``X-Repo-Commit``;
  a regular file is served with its git blob id as ``ETag``; an LFS file (every ``.gguf``)
  is a ``302`` to a signed URL on a second server (the "CDN") with ``X-Linked-Etag``
  (its quoted sha256) and ``X-Linked-Size``, as huggingface_hub expects.
- The CDN serves blobs by sha256 with ``Range`` support and refuses an ``Authorization``
  header (signed storage URLs do).
- A missing repo is 401 without a token and 404 with one.
- Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
  ``GatedRepo``). Knobs: ``FakeRepo.gated`` (401 without a token, 403 with one not in
  ``tokens``), ``FakeRepo.gone`` (listed, but 404 at resolve),
  ``FakeRepo.api_sha256`` (the API lists another LFS digest than resolve states),
  ``fail_next(429, retry_after=...)``. Every request is logged in ``requests``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False
    commit: str = field(default_factory=lambda: secrets.token_hex(20))
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit; "main" added
    gone: set[str] = field(default_factory=set)  # listed by the API, 404 at resolve
    api_sha256: dict[str, str] = field(default_factory=dict)  # the API states another digest

    def is_lfs(self, path: str) -> bool:
        return path.endswith(".gguf")


@dataclass
class Logged:
    host: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> (start, end inclusive); None: whole."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].partition("-")
    if not first:
        return max(0, size - int(last)), size - 1
    return int(first), min(size - 1, int(last)) if last else size - 1


def ranged(request: web.Request, data: bytes, headers: dict[str, str]) -> web.Response:
    """``data`` whole, or the part ``Range`` asks for (206), or 416."""
    rng = parse_range(request.headers.get("Range"), len(data))
    headers = {**headers, "Accept-Ranges": "bytes"}
    if rng is None:
        return web.Response(body=data, headers=headers)
    start, end = rng
    if start >= len(data) or start > end:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return web.Response(status=206, body=data[start : end + 1], headers=headers)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.tokens: set[str] = set()
        self.requests: list[Logged] = []
        self._fail: list[tuple[int, float]] = []
        self._blobs: dict[str, bytes] = {}
        self._runners: list[web.AppRunner] = []
        self.url = self.cdn_url = ""

    def add_repo(self, repo_id: str, repo: FakeRepo) -> FakeRepo:
        repo.branches.setdefault("main", repo.commit)
        for path, data in repo.files.items():
            if repo.is_lfs(path):
                self._blobs[hashlib.sha256(data).hexdigest()] = data
        self.repos[repo_id] = repo
        return repo

    def fail_next(self, status: int, *, retry_after: float | None = None, times: int = 1) -> None:
        self._fail.extend([(status, retry_after or 0.0)] * times)

    async def start(self) -> None:
        hub = web.Application()
        hub.router.add_get("/api/models/{org}/{name}/revision/{rev}", self._api)
        hub.router.add_get("/{org}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        cdn = web.Application()
        cdn.router.add_get("/blobs/{sha}", self._cdn)
        self.url = await self._serve(hub)
        self.cdn_url = await self._serve(cdn)

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    def _log(self, host: str, request: web.Request) -> None:
        self.requests.append(Logged(host, request.method, request.path_qs, dict(request.headers)))

    def _refusal(self, request: web.Request) -> tuple[FakeRepo | None, web.Response | None]:
        """The repo, or the answer the hub gives instead (injected failure, 404, gate)."""
        if self._fail:
            status, retry_after = self._fail.pop(0)
            headers = {"Retry-After": str(int(retry_after))} if retry_after else {}
            return None, web.Response(status=status, text="Too Many Requests", headers=headers)
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:  # 401 to strangers, as the hub does, so private repos stay unseen
            status = 404 if "Authorization" in request.headers else 401
            return None, _error(status, "RepoNotFound", "Repository Not Found")
        if repo.gated:
            auth = request.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
            if token is None:
                return None, _error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
            if token not in self.tokens:
                return None, _error(
                    403,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted "
                    "and you are not in the authorized list.",
                )
        return repo, None

    async def _api(self, request: web.Request) -> web.Response:
        self._log("hub", request)
        repo, refusal = self._refusal(request)
        if refusal is not None or repo is None:
            return refusal or web.Response(status=500)
        commit = _commit_of(repo, request.match_info["rev"])
        if commit is None:
            return _error(404, "RevisionNotFound", "Invalid rev id")
        blobs = request.query.get("blobs") in ("true", "True", "1")
        siblings = [self._sibling(repo, path, data, blobs) for path, data in repo.files.items()]
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        return web.json_response(
            {
                "_id": secrets.token_hex(12),
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "tags": ["gguf"],
                "siblings": siblings,
            }
        )

    def _sibling(self, repo: FakeRepo, path: str, data: bytes, blobs: bool) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling.update(blobId=git_blob_id(data), size=len(data))
            if repo.is_lfs(path):
                sibling["lfs"] = {
                    "sha256": repo.api_sha256.get(path) or hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
        return sibling

    async def _resolve(self, request: web.Request) -> web.Response:
        self._log("hub", request)
        repo, refusal = self._refusal(request)
        if refusal is not None or repo is None:
            return refusal or web.Response(status=500)
        commit = _commit_of(repo, request.match_info["rev"])
        if commit is None:
            return _error(404, "RevisionNotFound", "Invalid rev id")
        path = request.match_info["path"]
        data = repo.files.get(path) if path not in repo.gone else None
        if data is None:
            return _error(
                404,
                "EntryNotFound",
                f"{path} does not exist on {commit}",
                {"X-Repo-Commit": commit},
            )
        headers = {"X-Repo-Commit": commit}
        if not repo.is_lfs(path):
            return ranged(request, data, {**headers, "ETag": f'"{git_blob_id(data)}"'})
        sha = hashlib.sha256(data).hexdigest()
        signature = secrets.token_hex(8)
        return web.Response(
            status=302,
            text=f"Found. Redirecting to {self.cdn_url}",
            headers={
                **headers,
                "Location": f"{self.cdn_url}/blobs/{sha}?X-Amz-Signature={signature}",
                "ETag": f'"{git_blob_id(data)}"',
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)),
            },
        )

    async def _cdn(self, request: web.Request) -> web.Response:
        self._log("cdn", request)
        if "Authorization" in request.headers:
            return web.Response(status=400, text="Only one auth mechanism allowed")
        data = self._blobs.get(request.match_info["sha"])
        if data is None or "X-Amz-Signature" not in request.query:
            return web.Response(status=403, text="AccessDenied")
        return ranged(request, data, {"ETag": f'"{request.match_info["sha"]}"'})


def _commit_of(repo: FakeRepo, rev: str) -> str | None:
    if rev in repo.branches:
        return repo.branches[rev]
    return rev if rev in repo.branches.values() else None


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": message},
        status=status,
        headers={"X-Error-Code": code, "X-Error-Message": message, **(headers or {})},
    )

"""Dispatch over HTTP, for ``inferno batch worker`` processes.

Each item goes to the proxy's own endpoint with an admin key and
``X-Inferno-On-Behalf-Of: <owner key id>``: the proxy runs it as the batch's owner (model
permissions, limits, accounting, the request log), exactly as an item run inside the proxy,
and ``X-Inferno-Priority: background`` gives it the same low priority. The item's line is
read from the proxy too: ``GET /v1/files/ID/content`` with a ``Range`` header.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from inferno.batch.types import Answer
from inferno.core.errors import InfernoError, UpstreamError
from inferno.net import HttpClient


class HttpDispatch:
    def __init__(self, proxy_url: str, api_key: str | None, *, timeout: float = 600.0) -> None:
        parts = urlsplit(proxy_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._key = api_key
        self._timeout = timeout
        self.client = HttpClient()

    async def __call__(self, owner: str | None, path: str, body: bytes) -> Answer:
        headers = [(b"content-type", b"application/json"),
                   (b"x-inferno-priority", b"background")]
        if self._key:
            headers.append((b"authorization", f"Bearer {self._key}".encode()))
            if owner is not None:
                headers.append((b"x-inferno-on-behalf-of", owner.encode()))
        try:
            resp = await self.client.request(self._host, self._port, "POST",
                                             self._prefix + path, headers=headers, body=body,
                                             header_timeout=self._timeout)
            data = await resp.read()
        except InfernoError as exc:  # the proxy is unreachable: retryable, like a dead node
            return Answer(exc.status_code, exc.to_json(), retry_after=exc.retry_after)
        retry = resp.header("retry-after")
        return Answer(resp.status, data, resp.header("x-request-id") or "",
                      float(retry) if retry and retry.isdigit() else None)

    async def read_line(self, file_id: str, offset: int, length: int) -> bytes:
        headers = [(b"range", f"bytes={offset}-{offset + length - 1}".encode())]
        if self._key:
            headers.append((b"authorization", f"Bearer {self._key}".encode()))
        resp = await self.client.request(self._host, self._port, "GET",
                                         f"{self._prefix}/v1/files/{file_id}/content",
                                         headers=headers, header_timeout=self._timeout)
        data = await resp.read()
        if resp.status != 206 or len(data) != length:
            raise UpstreamError(f"reading a batch line from the proxy: {resp.status}")
        return data

    async def aclose(self) -> None:
        await self.client.aclose()

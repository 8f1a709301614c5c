"""What the batch component needs from its host, as plain types and callables."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from inferno.net import Request

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@dataclass(frozen=True, slots=True)
class Owner:
    """Who owns a file or batch: an API key's public id (None: auth is off)."""

    key_id: str | None
    admin: bool = False
    models: frozenset[str] | None = None  # None: every model

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def sees(self, owner: str | None) -> bool:
        return self.admin or owner == self.key_id


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one dispatched request: HTTP status, body, and a Retry-After."""

    status: int
    body: bytes
    request_id: str = ""
    retry_after: float | None = None


# Who sent a request (authentication happened on the headers already).
Identify = Callable[[Request], Owner]
# Run one request as the batch's owner through the host's routing, limits and accounting.
Dispatch = Callable[[str | None, str, bytes], Awaitable[Answer]]
# Read a line of an input file: (file id, offset, length) -> its bytes.
ReadLine = Callable[[str, int, int], Awaitable[bytes]]

"""Wire-format helpers shared by the server and the client.

Contract: every header block leaving this package goes through :func:`encode_headers`,
which refuses CR, LF and NUL in names and values (response splitting / request
smuggling), so nothing else has to validate header bytes.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

# RFC 9110 token characters: a header name made of anything else is refused.
_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

STATUS_LINES: Final[dict[int, bytes]] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("latin-1")) for s in HTTPStatus
}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status}")
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


def check_name(name: bytes) -> bytes:
    # translate() deleting every token byte leaves exactly the offending bytes.
    if not name or name.translate(None, _TCHAR):
        raise ValueError(f"invalid HTTP header name {name!r}")
    return name


def check_value(value: bytes) -> bytes:
    # Three C-level scans beat a regex for the short values seen here.
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        raise ValueError("HTTP header value contains CR, LF or NUL")
    return value


# Validated ``name: `` prefixes: handlers send the same few header names on every response.
_NAME_LINES: dict[str, bytes] = {}


def encode_str_headers(headers: list[tuple[str, str]]) -> bytes:
    """``name: value\\r\\n`` lines for str headers (latin-1), validated."""
    parts: list[bytes] = []
    for name, value in headers:
        prefix = _NAME_LINES.get(name)
        if prefix is None:
            prefix = check_name(name.encode("latin-1")) + b": "
            if len(_NAME_LINES) < 1024:  # bounded: names may come from upstreams
                _NAME_LINES[name] = prefix
        v = value.encode("latin-1")
        if b"\r" in v or b"\n" in v or b"\x00" in v:
            raise ValueError("HTTP header value contains CR, LF or NUL")
        parts += (prefix, v, b"\r\n")
    return b"".join(parts)


def find_header(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """First value of ``name`` in a lower-cased header list, latin-1 decoded."""
    key = name.lower().encode("latin-1")
    for k, v in headers:
        if k == key:
            return v.decode("latin-1")
    return None


# Connection-header modes of a response head.
CONN_NONE, CONN_CLOSE, CONN_KEEP = 0, 1, 2
_CONN_LINES: Final = (b"", b"connection: close\r\n", b"connection: keep-alive\r\n")
_SSE_EXTRA: Final = b"cache-control: no-cache\r\nx-accel-buffering: no\r\n"


class HeadEncoder:
    """Response heads up to (not including) the framing header, with a prefix cache.

    The status line, server, connection and content-type lines depend on a handful of
    values that repeat on every response, so they are encoded once per combination.
    """

    __slots__ = ("_cache", "_server_line")

    def __init__(self, server_header: str) -> None:
        self._server_line = (
            b"server: " + check_value(server_header.encode("latin-1")) + b"\r\n"
            if server_header
            else b""
        )
        self._cache: dict[tuple[int, str, int], bytes] = {}

    def encode(
        self, status: int, content_type: str, headers: list[tuple[str, str]] | None, mode: int
    ) -> bytes:
        key = (status, content_type, mode)
        prefix = self._cache.get(key)
        if prefix is None:
            prefix = status_line(status) + self._server_line + _CONN_LINES[mode]
            if content_type:
                prefix += encode_str_headers([("content-type", content_type)])
                if content_type.startswith("text/event-stream"):
                    prefix += _SSE_EXTRA
            if len(self._cache) < 512:  # bounded: content types come from handlers
                self._cache[key] = prefix
        if headers:
            prefix += encode_str_headers(headers)
        return prefix

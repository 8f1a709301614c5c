"""Server-sent events: encoding one event, and decoding a byte stream incrementally.

Contract: ``SSEDecoder.feed`` accepts arbitrary byte slices of an event stream (events
and even CRLF pairs split anywhere) and returns the ``data`` payloads of the events it
completed, multi-line data joined with ``\\n``. Comments and the ``event``, ``id`` and
``retry`` fields are ignored; events without data lines are not reported.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EVENT_ENDS", "SSE_DONE", "SSEDecoder", "last_event_end", "sse_event"]

SSE_DONE: Final = b"data: [DONE]\n\n"
# How an event ends (a blank line) in each line-ending style; ``bytes.endswith`` takes it.
EVENT_ENDS: Final = (b"\n\n", b"\r\n\r\n", b"\r\r")


def last_event_end(data: bytes) -> int:
    """The offset just past the last complete event in ``data``; 0 if none ends in it."""
    split = 0
    for end in EVENT_ENDS:
        i = data.rfind(end)
        if i >= 0 and i + len(end) > split:
            split = i + len(end)
    return split


def sse_event(data: bytes, name: str | None = None) -> bytes:
    """One event; ``name`` adds its ``event:`` line (the Anthropic and Responses streams)."""
    if name is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class SSEDecoder:
    __slots__ = ("_buf", "_data", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""  # an incomplete line, already LF-normalised
        self._data: list[bytes] | None = None
        self._skip_lf = False  # the previous slice ended in CR: a leading LF pairs with it

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            trailing_cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            self._skip_lf = trailing_cr
        if self._buf:
            chunk = self._buf + chunk
        lines = chunk.split(b"\n")
        self._buf = lines.pop()
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data is not None:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = None
            elif line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                if data is None:
                    data = [value]
                else:
                    data.append(value)
            elif line == b"data":
                if data is None:
                    data = [b""]
                else:
                    data.append(b"")
        self._data = data
        return out

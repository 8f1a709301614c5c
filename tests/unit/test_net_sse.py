"""SSE encoding and the incremental decoder, fed every way a stream can be cut."""

from __future__ import annotations

import pytest

from inferno.net import SSE_DONE, SSEDecoder, sse_event


def test_sse_event_and_done() -> None:
    assert sse_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse_event(b'{"a":1}', "ping") == b'event: ping\ndata: {"a":1}\n\n'
    assert SSE_DONE == b"data: [DONE]\n\n"
    assert SSEDecoder().feed(sse_event(b"x") + SSE_DONE) == [b"x", b"[DONE]"]


CASES = [
    ("single", [b"data: hello\n\n"], [b"hello"]),
    ("two-in-one-chunk", [b"data: a\n\ndata: b\n\n"], [b"a", b"b"]),
    ("split-mid-payload", [b"data: hel", b"lo\n\n"], [b"hello"]),
    ("split-mid-field-name", [b"da", b"ta: x\n", b"\n"], [b"x"]),
    ("split-between-newlines", [b"data: x\n", b"\n"], [b"x"]),
    ("crlf", [b"data: a\r\n\r\ndata: b\r\n\r\n"], [b"a", b"b"]),
    ("crlf-split-between-cr-and-lf", [b"data: a\r", b"\n\r", b"\n"], [b"a"]),
    ("bare-cr", [b"data: a\r\rdata: b\r\r"], [b"a", b"b"]),
    ("multi-line-data", [b"data: line1\ndata: line2\n\n"], [b"line1\nline2"]),
    ("no-space-after-colon", [b"data:tight\n\n"], [b"tight"]),
    ("only-first-space-stripped", [b"data:  two\n\n"], [b" two"]),
    ("field-without-colon", [b"data\n\n"], [b""]),
    ("comments-and-other-fields", [b": ping\nevent: x\nid: 3\nretry: 9\ndata: d\n\n"], [b"d"]),
    ("comment-only-event-not-reported", [b": keep-alive\n\n"], []),
    ("incomplete-event-held", [b"data: pending\n"], []),
    ("byte-by-byte", [bytes([c]) for c in b"data: a\r\ndata: b\r\n\r\n"], [b"a\nb"]),
]


@pytest.mark.parametrize(("pieces", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decoder(pieces: list[bytes], expected: list[bytes]) -> None:
    dec = SSEDecoder()
    got: list[bytes] = []
    for piece in pieces:
        got += dec.feed(piece)
    assert got == expected


def test_decoder_every_split_point() -> None:
    stream = b'data: {"x": 1}\r\n\r\n: c\ndata: a\ndata: b\n\ndata: [DONE]\n\n'
    for cut in range(len(stream) + 1):
        dec = SSEDecoder()
        assert dec.feed(stream[:cut]) + dec.feed(stream[cut:]) == [
            b'{"x": 1}',
            b"a\nb",
            b"[DONE]",
        ], cut

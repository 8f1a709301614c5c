from __future__ import annotations

import pytest

from inferno.backend.stops import StopMatcher


@pytest.mark.parametrize(
    ("stops", "pieces", "sent", "stopped"),
    [
        pytest.param((), ["a", "b"], "ab", False, id="no-stops"),
        pytest.param(("END",), ["hel", "lo E", "N", "D more"], "hello ", True, id="split-stop"),
        pytest.param(("END",), ["hel", "lo E", "x"], "hello Ex", False, id="false-start"),
        pytest.param(("\n\n", "###"), ["a\n", "\nb"], "a", True, id="first-of-many"),
        pytest.param(("stop",), ["sto"], "sto", False, id="held-then-flushed"),
        pytest.param(("ab",), ["xab"], "x", True, id="in-one-piece"),
    ],
)
def test_stop_matcher(stops: tuple[str, ...], pieces: list[str], sent: str,
                      stopped: bool) -> None:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces) + m.flush()
    assert out == sent
    assert m.stopped is stopped

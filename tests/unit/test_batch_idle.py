"""The batch loops' idle back-off: the wait doubles while looks find nothing, up to a cap,
and comes back to the base interval on the first look that finds work or on a wake-up."""

from __future__ import annotations

from inferno.batch.idle import IdleBackoff


def test_waits_stretch_while_idle_and_snap_back_on_work() -> None:
    b = IdleBackoff(0.5)
    assert b.most == 4.0
    assert [b.next(found=False) for _ in range(6)] == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert b.next(found=True) == 0.5
    assert b.next(found=False) == 1.0


def test_reset_starts_from_the_base_again() -> None:
    b = IdleBackoff(0.05, most=0.2)
    for _ in range(5):
        b.next(found=False)
    b.reset()
    assert b.next(found=False) == 0.1  # one idle look after the reset, not the cap


def test_a_cap_below_the_base_is_the_base() -> None:
    b = IdleBackoff(1.0, most=0.1)
    assert [b.next(found=False) for _ in range(3)] == [1.0, 1.0, 1.0]

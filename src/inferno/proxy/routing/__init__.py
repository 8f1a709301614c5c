"""Routing plugins, registered in one table: the only place a name becomes a class."""

from __future__ import annotations

from collections.abc import Callable

from inferno.proxy.routing.base import Picker, RouteContext
from inferno.proxy.routing.least_outstanding import LeastOutstanding
from inferno.proxy.routing.round_robin import RoundRobin

PICKERS: dict[str, Callable[[], Picker]] = {
    RoundRobin.name: RoundRobin,
    LeastOutstanding.name: LeastOutstanding,
}


def make_picker(name: str) -> Picker:
    try:
        return PICKERS[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy '{name}'; known: {', '.join(PICKERS)}") from None


__all__ = ["PICKERS", "Picker", "RouteContext", "make_picker"]

"""Providers, registered in one table; each module is imported only when chosen
(``kubernetes`` pulls in the official client, which ``inferno serve`` never needs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferno.governator.providers.base import NodeTemplate, Provider, ProxyDrainer


def _local(**kwargs: Any) -> Provider:
    from inferno.governator.providers.local import LocalProvider

    return LocalProvider(**kwargs)


def _kubernetes(**kwargs: Any) -> Provider:
    from inferno.governator.providers.kubernetes import KubernetesProvider

    return KubernetesProvider(**kwargs)


PROVIDERS: dict[str, Callable[..., Provider]] = {
    "local": _local,
    "kubernetes": _kubernetes,
}

__all__ = ["PROVIDERS", "NodeTemplate", "Provider", "ProxyDrainer"]

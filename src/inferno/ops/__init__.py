"""The operations server shared by every component, and helpers for its vitals."""

from inferno.ops.rate import RateMeter
from inferno.ops.server import OpsServer

__all__ = ["OpsServer", "RateMeter"]

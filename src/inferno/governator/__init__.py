"""The governator: keeps each pool just big enough to meet its targets at the lowest cost.

signals (telemetry in) -> policy (a pure function, with a reason) -> provider (nodes out);
every sample and decision goes to a store. See loop.py for the cycle.
"""

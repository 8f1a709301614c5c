"""The governator's policy files, reloaded while it runs.

On Kubernetes the policy, prices and pool -> deployment mapping are a mounted ConfigMap
the operator rewrites as InfernoScalingPolicies come and go; the kubelet updates the
mounted files in place (an atomic symlink swap). :class:`PolicyFiles` notices a change by
the files' content, polled every few seconds from the governator's loop, validates the
three together with the loaders used at start, and hands the result over; a bad file is
logged and the running policy kept. Files that are not there (the ConfigMap does not
exist yet, or no longer) are the empty policy when ``optional``: nothing is governed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from inferno.core.errors import ConfigError
from inferno.core.settings import load_yaml
from inferno.governator.spec import Policy, PriceList, load_policy, load_prices

log = logging.getLogger("inferno.governator")

NO_POOLS = Policy.model_construct(pools=[])  # a policy file not there (yet): govern nothing


@dataclass(frozen=True)
class Loaded:
    policy: Policy
    prices: PriceList
    deployments: dict[str, str]  # pool -> the provider's target (deployments file)


def load_deployments(path: Path | None) -> dict[str, str]:
    """A YAML mapping pool -> deployment (``infernodeployment/NAME`` or a Deployment)."""
    if path is None:
        return {}
    data = load_yaml(path) or {}
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()):
        raise ConfigError(f"{path}: expected a mapping of pool (model) -> deployment name")
    return dict(data)


class PolicyFiles:
    def __init__(self, policy: Path | None, prices: Path | None, deployments: Path | None,
                 *, optional: bool = False) -> None:
        self.paths = (policy, prices, deployments)
        self.optional = optional
        self._seen: tuple[bytes | None, ...] | None = None

    def _fingerprint(self) -> tuple[bytes | None, ...]:
        out: list[bytes | None] = []
        for path in self.paths:
            try:
                out.append(hashlib.sha256(path.read_bytes()).digest() if path else None)
            except OSError:  # not there (yet), or mid-swap: read as missing
                out.append(None)
        return tuple(out)

    def load(self) -> Loaded:
        """Load the three now; a missing policy file is no pools when ``optional``.
        Raises ConfigError naming the file and field."""
        self._seen = self._fingerprint()
        policy_path, prices_path, deployments_path = self.paths
        missing = [p for p in self.paths if p is not None and not p.exists()]
        if self.optional and missing:
            return Loaded(NO_POOLS, load_prices(None), {})
        prices = load_prices(prices_path)
        if policy_path is None:
            raise ConfigError("no policy file to reload")
        return Loaded(load_policy(policy_path, prices, prices_path), prices,
                      load_deployments(deployments_path))

    def poll(self) -> Loaded | None:
        """The files' new contents, once, when they changed and are valid; else None."""
        if self._fingerprint() == self._seen:
            return None
        try:
            loaded = self.load()
        except ConfigError as exc:  # _seen is the bad version now: logged once
            log.error("policy files changed but are invalid; keeping the running policy: "
                      "%s", exc.message)
            return None
        log.info("policy reloaded: pools %s", ", ".join(p.name for p in loaded.policy.pools)
                 or "(none)")
        return loaded

"""Builds a governator from settings: policy and prices (validated), store, provider.

Shared by ``inferno governator run`` and ``inferno serve`` (which passes the node
template and the minimum from its own flags).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from inferno.core.config import GovernatorSettings
from inferno.core.errors import ConfigError
from inferno.governator.loop import Governator
from inferno.governator.providers import PROVIDERS, NodeTemplate, Provider
from inferno.governator.reload import PolicyFiles
from inferno.governator.spec import (
    Policy,
    PriceList,
    check_node_types,
    default_policy,
    load_prices,
)
from inferno.governator.store import open_store
from inferno.net import HttpClient

log = logging.getLogger("inferno.governator")


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError as exc:
        raise ConfigError(f"invalid setting 'proxy_ops': {value!r} is not host:port") from exc


def load_policy_and_prices(s: GovernatorSettings, *, min_replicas: int | None = None,
                           model: str | None = None) -> tuple[Policy, PriceList]:
    """Refuses a bad file at start, naming the file and the field (ConfigError)."""
    if s.policy_file is not None:
        loaded = policy_files(s).load()
        return loaded.policy, loaded.prices
    prices = load_prices(s.prices_file)
    low = s.min_replicas if min_replicas is None else min_replicas
    policy = default_policy(model or s.model, low, max(low, s.max_replicas, 1),
                            list(prices.node_types))
    check_node_types(policy, prices, "the default policy",
                     str(s.prices_file or "the built-in price list"))
    return policy, prices


def policy_files(s: GovernatorSettings) -> PolicyFiles:
    return PolicyFiles(s.policy_file, s.prices_file, s.deployments_file,
                       optional=s.policy_optional)


def k8s_targets(s: GovernatorSettings, policy: Policy, named: dict[str, str]
                ) -> dict[str, str]:
    """Pool -> what the kubernetes provider scales for it: as ``named`` (the settings'
    k8s_deployments and the deployments file), else derived from k8s_deployment."""
    one = len(policy.pools) == 1
    return {p.name: named.get(p.name) or (s.k8s_deployment if one
                                          else f"{s.k8s_deployment}-{i}")
            for i, p in enumerate(policy.pools)}


def _reloader(s: GovernatorSettings, governator: Governator, files: PolicyFiles,
              provider: Provider) -> Callable[[], None]:
    next_at = [time.monotonic() + s.reload_interval]

    def reload() -> None:
        now = time.monotonic()
        if now < next_at[0]:
            return
        next_at[0] = now + s.reload_interval
        loaded = files.poll()
        if loaded is None:
            return
        if s.provider == "kubernetes":
            named = {**s.k8s_deployments, **loaded.deployments}
            provider.set_pools(  # type: ignore[attr-defined]
                k8s_targets(s, loaded.policy, named),
                {p.name: p.max_replicas for p in loaded.policy.pools})
        elif {p.name for p in loaded.policy.pools} != {p.name for p in
                                                       governator.policy.pools}:
            log.error("the local provider cannot add or remove pools while running: "
                      "restart the governator for the new policy")
            return
        governator.set_policy(loaded.policy, loaded.prices)
    return reload


def build_governator(s: GovernatorSettings, policy: Policy, prices: PriceList, *,
                     template: NodeTemplate | None = None, port_base: int | None = None,
                     ops_port_base: int | None = None, config: Path | None = None,
                     log_dir: Path | None = None) -> Governator:
    proxy_host, proxy_port = split_host_port(s.proxy_ops, 6100)
    client = HttpClient()
    base = template or NodeTemplate(model=s.model, engine=s.engine, threads=s.threads,
                                    parallel=s.parallel, n_ctx=s.n_ctx)
    files = policy_files(s) if s.policy_file is not None else None
    named = {**s.k8s_deployments, **(files.load().deployments if files else {})}
    provider: Provider
    if s.provider == "local":
        templates = {p.name: replace(base, model=p.model, max_replicas=p.max_replicas)
                     for p in policy.pools}
        provider = PROVIDERS["local"](
            templates=templates, proxy_host=proxy_host, proxy_port=proxy_port, client=client,
            host=s.host, drain_timeout=s.drain_timeout, config=config, log_dir=log_dir,
            port_base=s.node_port_base if port_base is None else port_base,
            ops_port_base=s.node_ops_port_base if ops_port_base is None else ops_port_base)
    else:
        provider = PROVIDERS["kubernetes"](
            deployments=k8s_targets(s, policy, named),
            max_replicas={p.name: p.max_replicas for p in policy.pools},
            namespace=s.k8s_namespace, node_ops_port=s.k8s_node_ops_port,
            proxy_host=proxy_host, proxy_port=proxy_port, client=client,
            drain_timeout=s.drain_timeout)
    store = open_store(s.database_url.get_secret_value() if s.database_url else None,
                       data_dir=s.data_dir, schema=s.database_schema,
                       raw_retention_s=s.raw_retention_s,
                       rollup_retention_s=s.rollup_retention_s,
                       queue_size=s.store_queue_size, batch_size=s.store_batch_size,
                       flush_interval=s.store_flush_interval)
    governator = Governator(policy, prices, provider, store, client, proxy_host=proxy_host,
                            proxy_port=proxy_port, interval=s.interval)
    if files is not None and s.reload_interval > 0:
        governator.reload = _reloader(s, governator, files, provider)
    return governator


def run_governator(governator: Governator, host: str, ops_port: int) -> None:
    """Run a governator until SIGTERM/SIGINT: its ops server first (a taken port fails
    fast), then the loop; on stop, its nodes are drained."""
    import asyncio
    import signal

    import uvloop

    async def main() -> None:
        await governator.start_ops(host, ops_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await governator.start()
        await stop.wait()
        await governator.drain()

    uvloop.run(main())

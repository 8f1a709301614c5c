"""The proxy's lifecycle: wire the pool, routing and forwarding; serve; drain on stop."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from inferno import __version__
from inferno.api.node import NodeState, Vitals
from inferno.core.config import ProxySettings
from inferno.net import HttpClient, HttpServer
from inferno.ops import OpsServer
from inferno.ops.tracing import tracing_from_env
from inferno.proxy.admission import Admission
from inferno.proxy.alert_rules import build_rules
from inferno.proxy.alerts import AlertManager, WebhookSender
from inferno.proxy.app import ProxyAPI
from inferno.proxy.board import Board
from inferno.proxy.discovery import RegistrationAPI, probe_static, sweep_leases
from inferno.proxy.events import Event, EventLog
from inferno.proxy.forward import Forwarder, Timeouts
from inferno.proxy.health.active import ActiveHealth
from inferno.proxy.health.breaker import BreakerPolicy
from inferno.proxy.health.passive import PassiveHealth
from inferno.proxy.metrics import ProxyMetrics
from inferno.proxy.models_admin import ModelsAdmin
from inferno.proxy.node_metrics import register_pool_metrics
from inferno.proxy.observe import LiveStats, RequestObserver
from inferno.proxy.pool import Node, Pool
from inferno.proxy.responses_store import ResponseStore
from inferno.proxy.retry import RetryBudget
from inferno.proxy.router import Router
from inferno.proxy.routing import build_router
from inferno.proxy.routing_api import RoutingAPI, load_routing_file
from inferno.proxy.security.guard import Limiter
from inferno.proxy.security.setup import Security
from inferno.proxy.standby import Standby, StandbyAPI, StandbyCollector
from inferno.proxy.state import RouterState
from inferno.proxy.tracing import ProxyTracing
from inferno.store import RequestQuery
from inferno.store.audit import AuditEvent

_AUDITED_NODE_EVENTS = frozenset({"registered", "deregistered", "expired", "ejected",
                                  "readmitted"})

log = logging.getLogger("inferno.proxy")


class Attached(Protocol):
    """A service run with the proxy (e.g. the batch workers): started once the store is
    open and before the API port listens; drained after the API port closes."""

    async def start(self) -> None: ...

    async def drain(self) -> None: ...


class Gateway:
    def __init__(self, settings: ProxySettings, *, max_upload_size: int = 0,
                 limiter: Limiter | None = None, board: Board | None = None) -> None:
        """``max_upload_size``: the largest body a mounted route may stream to disk;
        ``limiter``: rate-limit counters shared with other workers (default: this process);
        ``board``: the other workers' traffic, for admission (default: none)."""
        self.settings = settings
        self.state: NodeState = "loading"
        self.id = f"proxy-{socket.gethostname()}-{os.getpid()}"
        self._started = time.monotonic()
        registry = CollectorRegistry()
        self.metrics = ProxyMetrics(registry)
        s = settings
        self.pool = Pool(default_lease=s.default_lease, breaker=BreakerPolicy(
            consecutive_failures=s.eject_after_failures, base_ejection=s.base_ejection,
            max_ejection=s.max_ejection))
        self.metrics.bind_pool(
            lambda st: sum(1 for n in self.pool.snapshot.nodes if n.state == st))
        register_pool_metrics(registry, self.pool)
        # The self-healing timeline and the live statistics (dashboard, alerts).
        self.events = EventLog()
        self.stats = LiveStats()
        self.pool.on_event = self.events.emit
        self.client = HttpClient()
        self.passive = PassiveHealth(self.pool, max_ejected_percent=s.max_ejected_percent,
                                     on_eject=self._ejected, on_readmit=self._readmitted,
                                     on_probe=self._half_open)
        self.active = ActiveHealth(self.pool, self.client, interval=s.health_interval,
                                   timeout=s.health_timeout, healthy_after=s.healthy_after,
                                   unhealthy_after=s.unhealthy_after,
                                   on_change=self._health_changed)
        self.budget = RetryBudget(s.retry_budget_ratio, s.retry_budget_min_per_s)
        self.admission = Admission(max_per_node=s.max_per_node, queue_size=s.queue_size,
                                   queue_wait=s.queue_wait, board=board)
        routing = load_routing_file(s.routing_file) or s.routing
        self.router = Router(routing, build_router(routing))
        forwarder = Forwarder(
            self.client, self.metrics, self.passive, self.budget,
            Timeouts(s.connect_timeout, s.response_timeout, s.stream_idle_timeout),
            max_attempts=s.max_attempts, on_release=self.admission.release,
            on_failover=lambda a, b: self.events.emit(
                "failover", a.id, f"a request moved to {b.id} after: {a.last_error}"))
        self.metrics.running.set_function(
            lambda: float(sum(n.outstanding for n in self.pool.snapshot.nodes)))
        self.metrics.waiting.set_function(lambda: float(self.admission.queued))
        self.security = Security(s, registry, limiter)  # auth, limits, cache, request log, store
        self.stored = ResponseStore(self.security.store, flush_interval=s.log_flush_interval)
        # Node membership and ejections are administrative facts too: the audit trail
        # keeps them (the timeline forgets; the trail is for later questions).
        self.events.listeners.append(self._audit_node_event)
        observer = RequestObserver(self.metrics, self.stats)
        self.security.log.on_record = observer
        self.tracing = tracing_from_env("inferno-proxy")  # None unless OTEL_* say so
        self.api = ProxyAPI(self.pool, self.router, forwarder, self.admission, self.metrics,
                            request_timeout=s.request_timeout, guard=self.security.guard,
                            admin=self.security.admin,
                            models_admin=ModelsAdmin(
                                self.security.auth, self.pool, self.client,
                                node_tokens=[t.get_secret_value() for t in s.node_tokens],
                                audit=self.security.audit.record),
                            stored=self.stored)
        if self.tracing is not None:
            self.api.tracing = observer.tracing = ProxyTracing(self.tracing)
        # Scale from zero: requests for a standby model with no ready node wait for one.
        self.standby = Standby(self.pool, models=s.standby_models, ttl=s.standby_ttl,
                               hold_timeout=s.hold_timeout, max_held=s.max_held)
        self.pool.on_publish = self.standby.notify
        self.api.standby = self.standby
        registry.register(StandbyCollector(self.standby))
        # Setting standby models needs what registering a node needs: a node token.
        standby_api = StandbyAPI(self.standby, self.security.registration.authenticate)
        if s.ui:
            self.api.mount(self._dashboard())
        self.alerts = self._alerts() if s.alert_webhooks else None
        self.server = HttpServer(
            self.api.handle, max_body_size=s.max_body_size, max_stream_size=max_upload_size,
            max_header_size=s.max_header_size,
            header_timeout=s.header_timeout, body_timeout=s.body_timeout,
            keepalive_timeout=s.keepalive_timeout, send_timeout=s.stream_idle_timeout,
            max_connections=s.max_connections,
            max_requests_per_connection=s.max_requests_per_connection,
            before_body=self.api.check_head, on_reject=self.security.log.record_rejected)
        registration = RegistrationAPI(self.pool, self.metrics, guard=self.security.registration)
        self._router_state = state = RouterState(self.pool, self.router, self.budget,
                                                 self.admission)
        routing_api = RoutingAPI(lambda: self.router, self.set_router,
                                 self.security.registration.authenticate)
        self.ops = OpsServer(
            health=lambda: self.state, telemetry=self.vitals, registry=registry,
            routes={("POST", "/registration"): registration.post,
                    ("DELETE", "/registration/*"): registration.delete,
                    ("GET", "/router/state"): state.get,
                    ("GET", "/standby"): standby_api.get,
                    ("PUT", "/standby"): standby_api.put,
                    ("GET", "/routing"): routing_api.get,
                    ("PUT", "/routing"): routing_api.put},
            own_thread=s.ops_health == "thread", own_process=s.ops_health == "process")
        self._tasks: list[asyncio.Task[None]] = []
        self._attached: list[Attached] = []
        # A worker of several (proxy/workers.py): its own SO_REUSEPORT socket on the shared
        # API port, and its ops routes on a private loopback port.
        self.listen_sock: socket.socket | None = None
        self.ops_host: str | None = None

    def set_router(self, router: Router) -> None:
        """Routing changed at run time (``PUT /routing``): later requests use ``router``."""
        self.router = self._router_state.router = router
        self.api.set_router(router)
        log.info("routing changed: default profile %s, canary %s",
                 router.config.default_profile, router.config.canary)

    def attach(self, service: Attached) -> None:
        self._attached.append(service)

    async def start(self) -> None:
        s = self.settings
        await self.security.start()  # migrations, keys; refuses an unauthenticated public bind
        self.stored.start()
        for service in self._attached:
            await service.start()
        await self.ops.start(self.ops_host or s.host, s.ops_port)
        await self.server.start(s.host, s.port, sock=self.listen_sock)
        self._tasks.append(asyncio.create_task(sweep_leases(self.pool, self.metrics)))
        self._tasks.append(asyncio.create_task(self.active.run()))
        if self.security.store is not None:  # the dashboard's last hour survives a restart
            self._tasks.append(asyncio.create_task(self.stats.backfill(
                RequestQuery(self.security.store.engine), until=time.time())))
        if s.backends:
            self._tasks.append(asyncio.create_task(probe_static(self.pool, self.client,
                                                                list(s.backends))))
        if self.alerts is not None:
            await self._load_spend()
            self._tasks.append(asyncio.create_task(self.alerts.run(s.alert_interval)))
        self.state = "ready"
        log.info("proxy ready on http://%s:%d/v1 (ops %d)", s.host, self.server.port,
                 self.ops.port)

    async def drain(self) -> None:
        if self.state == "draining":
            return
        self.state = "draining"  # /health says 503 first, so a load balancer moves away
        self.api.accepting = False
        self.standby.close()  # held requests end now rather than at the drain deadline
        await self.server.stop(grace=self.settings.drain_timeout)
        for service in self._attached:
            await service.drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()
        await self.ops.stop()
        await self.stored.close()  # writes the stored responses still queued
        await self.security.close()  # flushes the request log
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # export what is batched

    def _dashboard(self) -> Any:
        # Imported here: a proxy run with ui off never loads Jinja2 or the templates.
        from inferno.proxy.dashboard import ProxyDashboardSource
        from inferno.ui import Dashboard

        sec = self.security
        return Dashboard(ProxyDashboardSource(self.pool, self.events, self.stats,
                                              self.admission, sec.auth, sec.keys, sec.store,
                                              serving=lambda: self.api.accepting,
                                              api=self.api.handle))

    def _alerts(self) -> AlertManager:
        s = self.settings
        m = self.metrics.alert_notifications
        return AlertManager(
            build_rules(s, self.pool, self.stats),
            [w.get_secret_value() for w in s.alert_webhooks],
            WebhookSender(on_result=lambda ok: m.labels("ok" if ok else "failed").inc()),
            silences=list(s.alert_silences), repeat_interval=s.alert_repeat_interval,
            on_change=lambda rule, subject, detail, firing: self.events.emit(
                "alert_firing" if firing else "alert_resolved", subject, f"{rule}: {detail}"))

    async def _load_spend(self) -> None:
        """Today's spend so far, so a restart does not reset the budget alert."""
        store = self.security.store
        if store is not None:
            today = time.strftime("%Y-%m-%d", time.gmtime())
            self.stats.add_spend(sum(u.cost for u in await store.requests.usage(
                since_day=today, until_day=today)))

    def _ejected(self, node: Node) -> None:
        self.metrics.ejections.inc()
        wait = max(0.0, node.breaker.open_until - time.monotonic())
        self.events.emit("ejected", node.id, f"breaker open for {wait:.1f} s after "
                         f"{node.last_error} (ejection #{node.breaker.ejections})")

    def _audit_node_event(self, event: Event) -> None:
        if event.kind in _AUDITED_NODE_EVENTS and event.node is not None:
            self.security.audit.record(AuditEvent(
                f"node.{event.kind}", event.node[:512], "system",
                detail={"detail": event.detail[:500]}, ts=event.ts))

    def _half_open(self, node: Node) -> None:
        self.events.emit("breaker_half_open", node.id,
                         "ejection over: one probe request may go through")

    def _readmitted(self, node: Node) -> None:
        self.metrics.readmissions.inc()
        self.events.emit("readmitted", node.id, "its probe request succeeded; breaker closed")

    def _health_changed(self, node: Node, healthy: bool) -> None:
        self.events.emit("healthy" if healthy else "unhealthy", node.id,
                         "back in rotation after passing health checks" if healthy
                         else "out of rotation: failed health checks")

    def vitals(self) -> dict[str, Any]:
        snap = self.pool.snapshot
        vitals = Vitals(
            id=self.id, component="proxy", version=__version__,
            state=self.state,
            uptime_s=round(time.monotonic() - self._started, 3), models=sorted(snap.models),
            capacity=sum(n.capacity for n in snap.nodes), in_flight=self.api.in_flight,
            requests_total=self.api.requests_total,
            nodes=[{"id": n.id, "address": n.address, "state": n.state,
                    "models": sorted(n.models), "outstanding": n.outstanding,
                    "requests": n.requests, "failures": n.failures,
                    "last_error": n.last_error} for n in snap.nodes],
        ).model_dump()
        # Requests waiting for a node of a standby model, per model (scale from zero), and
        # requests for one that found no ready node.
        vitals["held"] = dict(self.standby.held)
        vitals["unserved"] = dict(self.standby.unserved)
        return vitals

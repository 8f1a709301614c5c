"""The Inferno operator: reconciles Inferno's custom resources into Kubernetes objects.

- InfernoModel -> a cache PersistentVolumeClaim and a Job pulling the model into it;
  ``Downloaded`` when the Job succeeded, ``Degraded`` when it failed.
- InfernoDeployment -> a Deployment of ``inferno backend`` pods (registering with the
  proxy's ops Service) and a headless Service; waits until its model is Downloaded;
  status ``replicas``/``readyReplicas``/``selector`` (the scale subresource's) and
  ``Ready``/``Scaling``/``Degraded``.
- InfernoRoute -> the proxy's routing (``inferno-routes`` ConfigMap, see objects_config),
  also PUT to the proxy's ops ``/routing`` (again every refresh_interval, so a proxy that
  restarted gets it back).
- InfernoScalingPolicy -> the governator's policy and price list (a ConfigMap per policy,
  and ``inferno-governator``, all of the namespace's together, which the governator of an
  install mounts and reloads).

Handlers live on a registry made here (never kopf's global one). Each reconcile writes the
whole desired state of every child by a deterministic name, so a handler repeated (after a
conflict, a 5xx, a restart half-way) converges without duplicates. Status is computed from
the children alone, by the reconcile handlers, by handlers on the children's events, and
by a periodic refresh that covers events missed while a watch was down. API failures are
retried (kopf's TemporaryError); invalid specs are not (PermanentError). Deletion: kopf's
finalizer holds each resource until its children are deleted (the garbage collector would
too, through the owner references; deleting here does not wait for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import orjson
from pydantic import ValidationError

from inferno.core.errors import ConfigError, InfernoError
from inferno.k8s import objects as ob
from inferno.k8s import status as st
from inferno.k8s.objects_config import (
    GOVERNATOR,
    ROUTES,
    governator_configmap,
    merge_routing,
    policy_configmap,
    policy_name,
    routes_configmap,
    routing,
)
from inferno.k8s.operator_api import ApiError, Kube
from inferno.k8s.resources import GROUP, VERSION, DeploymentSpec, RouteSpec, ScalingPolicySpec

log = logging.getLogger("inferno.k8s.operator")


@dataclass(frozen=True)
class OperatorConfig:
    proxy_ops: str = "inferno-proxy:6100"  # the proxy's ops Service nodes register with
    image: str = ob.DEFAULT_IMAGE  # nodes' and pull Jobs' image (an InfernoDeployment may override)
    retry_delay: float = 5.0  # before a reconcile that failed or waits is tried again
    refresh_interval: float = 30.0  # status refresh from the children, events missed or not
    api_client: Any = None  # a kubernetes.client.ApiClient; default: kubeconfig or in-cluster
    node_token_secret: str | None = None  # the Secret (and key) node pods read their
    node_token_key: str = "token"  # registration token from, when the proxy wants one
    node_token: str | None = None  # the token itself, for the proxy's PUT /standby


def plain(x: Any) -> Any:
    """kopf's read-only body views as plain dicts and lists."""
    if isinstance(x, Mapping):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    return x


def ident(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body["metadata"]
    return str(meta.get("namespace") or ""), str(meta["name"])


@contextlib.contextmanager
def _retrying(delay: float) -> Iterator[None]:
    try:
        yield
    except ApiError as exc:
        if exc.status in (400, 403, 422):  # the request itself is wrong: retrying won't help
            raise kopf.PermanentError(f"Kubernetes API refused: {exc}") from exc
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=delay) from exc
    except ValidationError as exc:
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc


async def put_proxy(cfg: OperatorConfig, path: str, body: Any) -> None:
    """PUT ``body`` to the proxy's ops route ``path`` with the node token (``/standby``,
    ``/routing``), at every proxy replica the ops name resolves to (a headless Service);
    unless all of them took it, the handler is retried (TemporaryError)."""
    from inferno.net import HttpClient, resolve_all

    host, sep, port_text = cfg.proxy_ops.rpartition(":")
    host, port = (host, int(port_text)) if sep else (cfg.proxy_ops, ob.NODE_OPS_PORT)
    headers = [(b"content-type", b"application/json")]
    if cfg.node_token:
        headers.append((b"authorization", b"Bearer " + cfg.node_token.encode()))
    payload = orjson.dumps(body)
    client = HttpClient()

    async def put(address: tuple[str, int]) -> str | None:
        """What went wrong at one replica, or None."""
        try:
            resp = await client.request(*address, "PUT", path, headers=headers, body=payload,
                                        connect_timeout=2.0, header_timeout=5.0)
            answer = await resp.read()
        except InfernoError as exc:
            return f"{address[0]}:{address[1]} failed: {exc.message}"
        if resp.status != 200:
            return (f"{address[0]}:{address[1]} answered {resp.status}: "
                    f"{answer[:300].decode(errors='replace')}")
        return None

    try:
        addresses = await resolve_all(host.strip("[]"), port, within=2.0)
        failures = [f for f in await asyncio.gather(*map(put, addresses)) if f]
    except InfernoError as exc:
        failures = [exc.message]
    finally:
        await client.aclose()
    if failures:
        raise kopf.TemporaryError(f"the proxy's PUT {path}: {'; '.join(failures)}",
                                  delay=cfg.retry_delay)


async def put_standby(cfg: OperatorConfig, models: list[str]) -> None:
    await put_proxy(cfg, "/standby", {"models": models})


def _load_api_client() -> Any:
    import kubernetes

    try:
        kubernetes.config.load_kube_config()
    except Exception:  # no kubeconfig: inside the cluster, with the service account
        kubernetes.config.load_incluster_config()
    return kubernetes.client.ApiClient()


def build_registry(cfg: OperatorConfig) -> kopf.OperatorRegistry:
    reg = kopf.OperatorRegistry()
    kube_box: list[Kube] = []
    on = kopf.on

    def kube() -> Kube:
        return kube_box[0]

    @on.startup(registry=reg)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = "inferno.dev/operator"
        settings.networking.error_backoffs = [cfg.retry_delay / 4, cfg.retry_delay / 2,
                                              cfg.retry_delay]
        # A resource deleted while its refresh timer runs (a few API calls) keeps its
        # finalizer until kopf sees the timer finish; kopf looks again after
        # cancellation_polling, 60 s by default, so the deletion would wait that long.
        settings.background.cancellation_polling = cfg.retry_delay
        api = cfg.api_client or await asyncio.to_thread(_load_api_client)
        kube_box[:] = [Kube(api)]

    @on.login(registry=reg)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if cfg.api_client is None:
            return kopf.login_via_client(**kwargs)
        conf = cfg.api_client.configuration
        return kopf.ConnectionInfo(server=conf.host, insecure=not conf.verify_ssl)

    async def set_status(kind: str, obj: dict[str, Any], new: dict[str, Any]) -> None:
        meta = obj["metadata"]
        current = await kube().get(kind, meta["namespace"], meta["name"])
        if current is None or current["metadata"].get("deletionTimestamp"):
            return
        old = current.get("status") or {}
        # The generation this status describes: the one reconciled, even if a newer one
        # arrived meanwhile (its own reconcile will report it).
        gen = meta.get("generation")
        out = {**new, "conditions": st.merge_conditions(old.get("conditions") or [],
                                                        new.get("conditions") or [], gen)}
        if gen is not None:
            out["observedGeneration"] = gen
        if not st.same(old, out):
            await kube().patch_status(kind, meta["namespace"], meta["name"], out)

    @contextlib.asynccontextmanager
    async def guard(kind: str, obj: dict[str, Any]) -> AsyncIterator[None]:
        """A reconcile's errors as kopf's; a spec the resource models refuse (checks the
        CRD's schema cannot make, e.g. minReplicas above maxReplicas) is also reported in
        the status: Ready=False and Degraded=True, reason InvalidSpec."""
        try:
            with _retrying(cfg.retry_delay):
                yield
        except kopf.PermanentError as exc:
            if isinstance(exc.__cause__, ValidationError):
                why = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}"
                                for e in exc.__cause__.errors(include_url=False))
                with contextlib.suppress(ApiError):
                    await set_status(kind, obj, {"conditions": [
                        st.condition("Ready", False, "InvalidSpec", why),
                        st.condition("Degraded", True, "InvalidSpec", why)]})
            raise

    # ---- InfernoModel ----
    async def pull(model: dict[str, Any]) -> dict[str, Any]:
        want = ob.model_job(model, cfg.image)
        meta = want["metadata"]
        job = await kube().get("Job", meta["namespace"], meta["name"])
        if job is not None:
            env = job["spec"]["template"]["spec"]["containers"][0].get("env", [])
            if env == want["spec"]["template"]["spec"]["containers"][0]["env"]:
                return job  # a Job runs once: it is never patched
            # The source changed: a Job's template is immutable, so it is made anew.
            await kube().delete("Job", meta["namespace"], meta["name"])
            raise kopf.TemporaryError("the model's source changed: pulling again",
                                      delay=cfg.retry_delay)
        return await kube().ensure(want)

    @on.resume(GROUP, VERSION, "infernomodels", registry=reg)
    @on.create(GROUP, VERSION, "infernomodels", registry=reg)
    @on.update(GROUP, VERSION, "infernomodels", registry=reg)
    async def model_reconcile(body: kopf.Body, **_: Any) -> None:
        model = plain(body)
        async with guard("InfernoModel", model):
            await kube().ensure(ob.model_pvc(model))
            job = await pull(model)
            await set_status("InfernoModel", model, {
                "cache": ob.cache_name(model["metadata"]["name"]),
                "conditions": st.model_conditions(job)})

    @on.delete(GROUP, VERSION, "infernomodels", registry=reg)
    async def model_delete(body: kopf.Body, **_: Any) -> None:
        namespace, name = ident(body)
        with _retrying(cfg.retry_delay):
            await kube().delete("Job", namespace, ob.pull_job_name(name))
            await kube().delete("PersistentVolumeClaim", namespace, ob.cache_name(name))

    async def model_refresh(namespace: str, name: str) -> None:
        model = await kube().get("InfernoModel", namespace, name)
        if model is not None:
            job = await kube().get("Job", namespace, ob.pull_job_name(name))
            if job is not None:
                await set_status("InfernoModel", model,
                                 {"conditions": st.model_conditions(job)})

    @on.event("batch", "v1", "jobs", labels={ob.LABEL_MODEL: kopf.PRESENT,
                                             "app.kubernetes.io/managed-by": ob.MANAGED_BY},
              registry=reg)
    async def job_event(body: kopf.Body, **_: Any) -> None:
        namespace = ident(body)[0]
        await model_refresh(namespace, body["metadata"]["labels"][ob.LABEL_MODEL])

    @kopf.timer(GROUP, VERSION, "infernomodels", interval=cfg.refresh_interval, registry=reg)
    async def model_timer(body: kopf.Body, **_: Any) -> None:
        namespace, name = ident(body)
        await model_refresh(namespace, name)

    # ---- InfernoDeployment ----
    @on.resume(GROUP, VERSION, "infernodeployments", registry=reg)
    @on.create(GROUP, VERSION, "infernodeployments", registry=reg)
    @on.update(GROUP, VERSION, "infernodeployments", registry=reg)
    async def deployment_reconcile(body: kopf.Body, **_: Any) -> None:
        namespace = ident(body)[0]
        dep = plain(body)
        async with guard("InfernoDeployment", dep):
            spec = DeploymentSpec.model_validate(dep["spec"])
            model = await kube().get("InfernoModel", namespace, spec.model_ref)
            if model is None or not st.is_true(model, "Downloaded"):
                waiting = st.deployment_status(dep, None)
                waiting["conditions"][0] = st.condition(
                    "Ready", False, "ModelNotDownloaded",
                    f"waiting for InfernoModel {spec.model_ref} to be downloaded")
                await set_status("InfernoDeployment", dep, waiting)
                raise kopf.TemporaryError(f"InfernoModel {spec.model_ref} is not downloaded",
                                          delay=cfg.retry_delay)
            await kube().ensure(ob.node_service(dep))
            token = ((cfg.node_token_secret, cfg.node_token_key) if cfg.node_token_secret
                     else None)
            node = await kube().ensure(ob.node_deployment(dep, model, cfg.proxy_ops, cfg.image,
                                                          token))
            await set_status("InfernoDeployment", dep, st.deployment_status(dep, node))
            await sync_standby(namespace)

    @on.delete(GROUP, VERSION, "infernodeployments", registry=reg)
    async def deployment_delete(body: kopf.Body, **_: Any) -> None:
        namespace, name = ident(body)
        with _retrying(cfg.retry_delay):
            await kube().delete("Deployment", namespace, ob.node_name(name))
            await kube().delete("Service", namespace, ob.node_name(name))
            await sync_standby(namespace, without=name)

    renders: dict[tuple[str, str], asyncio.Lock] = {}

    def rendering(what: str, namespace: str) -> asyncio.Lock:
        """One render at a time of a ConfigMap that several resources make together: two
        handlers interleaving list-then-write would let the one that listed first write
        last (a policy deleted meanwhile rendered back, a ConfigMap made again after its
        last policy deleted it)."""
        return renders.setdefault((what, namespace), asyncio.Lock())

    standby: dict[str, set[str]] = {}  # namespace -> its scale-to-zero models
    standby_sent: list[set[str]] = [set()]  # what the proxy was last told

    async def sync_standby(namespace: str, without: str | None = None) -> None:
        """The proxy's standby models: those of deployments that scale to zero (a request
        for one with no node is held while a replica starts, not refused)."""
        models: set[str] = set()
        for d in await kube().list("InfernoDeployment", namespace):
            if d["metadata"]["name"] == without or d["metadata"].get("deletionTimestamp"):
                continue
            try:
                scales_to_zero = DeploymentSpec.model_validate(d["spec"]).scale_to_zero.enabled
            except ValidationError:  # reported by its own reconcile
                continue
            if scales_to_zero:
                model = await kube().get("InfernoModel", namespace, d["spec"]["modelRef"])
                if model is not None:
                    models.add(ob.served_name(model))
        standby[namespace] = models
        everywhere = set().union(*standby.values())
        if everywhere != standby_sent[0]:
            await put_standby(cfg, sorted(everywhere))
            standby_sent[0] = everywhere

    async def deployment_refresh(namespace: str, name: str) -> None:
        dep = await kube().get("InfernoDeployment", namespace, name)
        node = await kube().get("Deployment", namespace, ob.node_name(name))
        if dep is not None and node is not None:
            await set_status("InfernoDeployment", dep, st.deployment_status(dep, node))

    @on.event("apps", "v1", "deployments", labels={ob.LABEL_DEPLOYMENT: kopf.PRESENT,
                                                   "app.kubernetes.io/managed-by": ob.MANAGED_BY},
              registry=reg)
    async def node_event(body: kopf.Body, **_: Any) -> None:
        namespace = ident(body)[0]
        await deployment_refresh(namespace, body["metadata"]["labels"][ob.LABEL_DEPLOYMENT])

    @kopf.timer(GROUP, VERSION, "infernodeployments", interval=cfg.refresh_interval,
                registry=reg)
    async def deployment_timer(body: kopf.Body, **_: Any) -> None:
        namespace, name = ident(body)
        await deployment_refresh(namespace, name)

    # ---- InfernoRoute ----
    async def served(namespace: str, deployment: str) -> str | None:
        dep = await kube().get("InfernoDeployment", namespace, deployment)
        if dep is None:
            return None
        model = await kube().get("InfernoModel", namespace, dep["spec"]["modelRef"])
        return ob.served_name(model) if model is not None else None

    routes_by_ns: dict[str, dict[str, Any]] = {}  # namespace -> its routing, if routed
    routes_sent: list[float] = [0.0]  # when the proxy was last told (monotonic)

    async def render_routes(namespace: str, without: str | None = None) -> list[str]:
        """Re-renders the namespace's routes ConfigMap (and the routing sync_routes PUTs);
        the deployments not found."""
        async with rendering(ROUTES, namespace):
            routes = [r for r in await kube().list("InfernoRoute", namespace)
                      if r["metadata"]["name"] != without
                      and not r["metadata"].get("deletionTimestamp")]
            if not routes:
                await kube().delete("ConfigMap", namespace, ROUTES)
                routes_by_ns.pop(namespace, None)
                return []
            names = {b["deployment"] for r in routes for b in r["spec"]["backends"]}
            found = {n: s for n in sorted(names)
                     if (s := await served(namespace, n)) is not None}
            await kube().ensure(routes_configmap(namespace, routes, found))
            routes_by_ns[namespace] = routing(routes, found)
            return sorted(names - set(found))

    async def sync_routes() -> None:
        """The proxy's routing: every watched namespace's routes (PUT /routing; the same
        body again is harmless, which the timer below relies on)."""
        await put_proxy(cfg, "/routing", merge_routing(list(routes_by_ns.values())))
        routes_sent[0] = asyncio.get_running_loop().time()

    @kopf.timer(GROUP, VERSION, "infernoroutes", interval=cfg.refresh_interval, registry=reg)
    async def route_timer(body: kopf.Body, **_: Any) -> None:
        """Again every refresh_interval (once for all routes), so a proxy that restarted,
        or a replica that was added, gets the routes back."""
        namespace = ident(body)[0]
        if namespace not in routes_by_ns:  # not rendered since the operator started
            with _retrying(cfg.retry_delay):
                await render_routes(namespace)
            await sync_routes()
        elif asyncio.get_running_loop().time() - routes_sent[0] >= cfg.refresh_interval / 2:
            await sync_routes()

    @on.resume(GROUP, VERSION, "infernoroutes", registry=reg)
    @on.create(GROUP, VERSION, "infernoroutes", registry=reg)
    @on.update(GROUP, VERSION, "infernoroutes", registry=reg)
    async def route_reconcile(body: kopf.Body, **_: Any) -> None:
        namespace = ident(body)[0]
        route = plain(body)
        async with guard("InfernoRoute", route):
            spec = RouteSpec.model_validate(route["spec"])
            mine = {b.deployment for b in spec.backends}
            missing = [n for n in await render_routes(namespace) if n in mine]
            ok = not missing
            await set_status("InfernoRoute", route, {"configMap": ROUTES, "conditions": [
                st.condition("Ready", ok, "Routed" if ok else "DeploymentMissing",
                             "" if ok else f"no InfernoDeployment {', '.join(missing)}")]})
            await sync_routes()  # the deployments found are routed already
            if missing:
                raise kopf.TemporaryError(f"waiting for {', '.join(missing)}",
                                          delay=cfg.retry_delay)

    @on.delete(GROUP, VERSION, "infernoroutes", registry=reg)
    async def route_delete(body: kopf.Body, **_: Any) -> None:
        namespace, name = ident(body)
        with _retrying(cfg.retry_delay):
            await render_routes(namespace, without=name)
        try:
            await sync_routes()
        except kopf.TemporaryError as exc:  # the route goes anyway: never held by a proxy
            log.warning("route %s/%s deleted, but %s", namespace, name, exc)

    # ---- InfernoScalingPolicy ----
    @on.resume(GROUP, VERSION, "infernoscalingpolicies", registry=reg)
    @on.create(GROUP, VERSION, "infernoscalingpolicies", registry=reg)
    @on.update(GROUP, VERSION, "infernoscalingpolicies", registry=reg)
    async def policy_reconcile(body: kopf.Body, **_: Any) -> None:
        namespace = ident(body)[0]
        policy = plain(body)
        async with guard("InfernoScalingPolicy", policy):
            spec = ScalingPolicySpec.model_validate(policy["spec"])
            dep = await kube().get("InfernoDeployment", namespace, spec.deployment)
            model = await served(namespace, spec.deployment)
            if dep is None or model is None:
                await set_status("InfernoScalingPolicy", policy, {"conditions": [
                    st.condition("Ready", False, "DeploymentMissing",
                                 f"no InfernoDeployment {spec.deployment} (or its model)")]})
                raise kopf.TemporaryError(f"waiting for {spec.deployment}",
                                          delay=cfg.retry_delay)
            await kube().ensure(policy_configmap(policy, dep, model))
            await render_governator(namespace)
            await set_status("InfernoScalingPolicy", policy, {
                "configMap": policy_name(policy["metadata"]["name"]),
                "conditions": [st.condition("Ready", True, "Rendered")]})

    @on.delete(GROUP, VERSION, "infernoscalingpolicies", registry=reg)
    async def policy_delete(body: kopf.Body, **_: Any) -> None:
        namespace, name = ident(body)
        with _retrying(cfg.retry_delay):
            await kube().delete("ConfigMap", namespace, policy_name(name))
            await render_governator(namespace, without=name)

    async def render_governator(namespace: str, without: str | None = None) -> None:
        """The namespace's combined governator ConfigMap: every policy whose deployment
        (and its model) exists; none: the ConfigMap goes (the governator then has none)."""
        async with rendering(GOVERNATOR, namespace):
            found = []
            for p in await kube().list("InfernoScalingPolicy", namespace):
                if p["metadata"]["name"] == without or p["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    spec = ScalingPolicySpec.model_validate(p["spec"])
                except ValidationError:  # reported by its own reconcile
                    continue
                dep = await kube().get("InfernoDeployment", namespace, spec.deployment)
                model = await served(namespace, spec.deployment)
                if dep is not None and model is not None:
                    found.append((p, dep, model))
            if found:
                await kube().ensure(governator_configmap(namespace, found))
            else:
                await kube().delete("ConfigMap", namespace, GOVERNATOR)

    @on.cleanup(registry=reg)
    async def cleanup(**_: Any) -> None:
        if kube_box and cfg.api_client is None:
            await kube_box[0].close()

    return reg


def run(cfg: OperatorConfig, *, namespaces: list[str], clusterwide: bool,
        liveness: str | None = None) -> None:
    """Run the operator until SIGTERM/SIGINT (kopf handles both)."""
    if cfg.api_client is None:
        try:  # fail here, plainly, rather than in kopf's startup with a traceback
            _load_api_client().close()
        except Exception as exc:
            raise ConfigError(f"no Kubernetes configuration found (kubeconfig or "
                              f"in-cluster service account): {exc}") from exc
    asyncio.run(kopf.operator(registry=build_registry(cfg), clusterwide=clusterwide,
                              namespaces=namespaces, standalone=True,
                              liveness_endpoint=liveness))

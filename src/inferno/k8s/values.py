"""What ``inferno k8s render`` and the Helm chart take: one model, two front ends.

The chart's ``values.schema.json`` is generated from :class:`RenderValues`
(:func:`values_schema`), so ``helm install --set`` and ``inferno k8s render --set`` refuse
the same mistakes. Names are camelCase, as Helm values usually are.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[mkMGTPE]|e[0-9]+)?$")]
DnsName = Annotated[str, Field(min_length=1, max_length=63,
                               pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Values(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Values):
    """A key of a Secret in the release's namespace."""

    name: DnsName
    key: Annotated[str, Field(min_length=1, max_length=253)]


class Connection(_Values):
    """A URL given inline (kept in a Secret the manifests create; it wins over secretRef)
    or a key of an existing Secret."""

    url: Annotated[str, Field(min_length=1)] | None = None
    secret_ref: Annotated[SecretRef | None, Field(alias="secretRef")] = None


class Resources(_Values):
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}


class EnvVar(_Values):
    """A setting for which the values have no field: ``INFERNO_PROXY_QUEUE_SIZE``, say."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    value: str


class Proxy(_Values):
    # More than one needs PostgreSQL (database): keys and logs are shared through it.
    replicas: Annotated[int, Field(ge=1, le=100)] = 1
    port: Port = 8080
    ops_port: Annotated[Port, Field(alias="opsPort")] = 6100
    service_type: Annotated[Literal["ClusterIP", "NodePort", "LoadBalancer"],
                            Field(alias="serviceType")] = "ClusterIP"
    # auth "on": every request needs a key (`inferno keys create` in a proxy pod).
    auth: Literal["on", "none"] = "on"
    resources: Resources = Resources(requests={"cpu": "500m", "memory": "512Mi"},
                                     limits={"memory": "1Gi"})
    # Any other proxy setting as its environment variable (README "Configuration").
    extra_env: Annotated[list[EnvVar], Field(alias="extraEnv")] = []


class Operator(_Values):
    enabled: bool = True
    resources: Resources = Resources(requests={"cpu": "100m", "memory": "128Mi"},
                                     limits={"memory": "256Mi"})


class Governator(_Values):
    enabled: bool = False
    ops_port: Annotated[Port, Field(alias="opsPort")] = 6300
    resources: Resources = Resources(requests={"cpu": "100m", "memory": "256Mi"},
                                     limits={"memory": "512Mi"})
    extra_env: Annotated[list[EnvVar], Field(alias="extraEnv")] = []


class NodeToken(_Values):
    """The token inference nodes present when they register with the proxy: a key of an
    existing Secret (the default: create it before installing), or a value given inline
    (kept in the Secret <name>-node-token; it wins over secretRef)."""

    value: Annotated[str, Field(min_length=16)] | None = None
    secret_ref: Annotated[SecretRef | None, Field(alias="secretRef")] = SecretRef(
        name="inferno-node-token", key="token")


class Toggle(_Values):
    enabled: bool = False


class RenderValues(_Values):
    """Everything the manifests depend on; defaults are a working install."""

    namespace: DnsName = "inferno"
    create_namespace: Annotated[bool, Field(alias="createNamespace")] = True
    # Prefix of every object's name (Helm: the release name).
    name: DnsName = "inferno"
    image: Annotated[str, Field(min_length=1, max_length=1024)] = "inferno:0.1.0"
    image_pull_policy: Annotated[Literal["Always", "IfNotPresent", "Never"],
                                 Field(alias="imagePullPolicy")] = "IfNotPresent"
    proxy: Proxy = Proxy()
    operator: Operator = Operator()
    governator: Governator = Governator()
    # PostgreSQL (postgresql+asyncpg://...); unset: SQLite on the proxy pod's volume (one
    # replica's state only: fine to try, not for production).
    database: Connection = Connection()
    # Redis (redis://...): rate-limit counters shared by the proxy replicas.
    redis: Connection = Connection()
    node_token: Annotated[NodeToken, Field(alias="nodeToken")] = NodeToken()
    service_monitor: Annotated[Toggle, Field(alias="serviceMonitor")] = Toggle()
    grafana_dashboard: Annotated[Toggle, Field(alias="grafanaDashboard")] = Toggle(enabled=True)

    @model_validator(mode="after")
    def _token(self) -> RenderValues:
        if self.node_token.value is None and self.node_token.secret_ref is None:
            raise ValueError("nodeToken: give value or secretRef")
        return self

    def wire(self) -> dict[str, Any]:
        """The values as values.yaml spells them (defaults filled in)."""
        return self.model_dump(by_alias=True, mode="json")


def values_schema() -> dict[str, Any]:
    """``values.schema.json``: JSON Schema of the values, with no ``$ref`` left (Helm's
    validator follows refs, but a flat schema reads better in the chart)."""
    from inferno.k8s.crds import structural

    schema = RenderValues.model_json_schema(by_alias=True, mode="validation")
    flat = structural(schema)
    _to_json_schema(flat)
    flat["$schema"] = "http://json-schema.org/draft-07/schema#"
    flat["additionalProperties"] = False
    return flat


def _to_json_schema(node: Any) -> None:
    """Back from the structural dialect to JSON Schema: ``nullable`` as a type union, and
    objects closed (``additionalProperties: false``) so a misspelt value is refused."""
    if isinstance(node, list):
        for n in node:
            _to_json_schema(n)
        return
    if not isinstance(node, dict):
        return
    if node.pop("nullable", False) and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    if "properties" in node:
        node["additionalProperties"] = False
    for v in node.values():
        _to_json_schema(v)

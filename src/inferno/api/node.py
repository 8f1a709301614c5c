"""The node protocol: how a backend announces itself to the proxy, and the vitals it reports.

``POST /registration`` on the proxy's ops port takes a :class:`Registration`; sending the
same registration again renews the node's lease (that is the heartbeat), and
``DELETE /registration/{id}`` (or ``{"id": ..., "state": "draining"}``) removes it from
rotation before the node stops. A node whose loaded models change registers again at
once. ``GET /telemetry`` on any node returns :class:`Vitals`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NodeState = Literal["loading", "ready", "draining"]

_HOST_PORT = r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$"


class Registration(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
    # host:port of the node's inference (OpenAI) API.
    address: Annotated[str, Field(pattern=_HOST_PORT, max_length=262)]
    metrics_port: Annotated[int, Field(ge=1, le=65535)]
    models: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]],
                      Field(min_length=1, max_length=64)]
    capacity: Annotated[int, Field(ge=1, le=4096)] = 1
    # Nodes that load models at run time: of ``models`` (every name the node serves, loading
    # it on demand when needed), those loaded now and those it may load.
    loaded: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=64)] = []
    available: Annotated[list[Annotated[str, Field(max_length=256)]],
                         Field(max_length=64)] = []
    state: NodeState = "ready"
    # Seconds the registration stays valid without a renewal.
    lease_seconds: Annotated[float, Field(gt=0, le=3600)] | None = None
    # What the node costs, for cost-aware routing: per hour of running, per 1M tokens.
    price_per_hour: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    price_per_mtok_input: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    price_per_mtok_output: Annotated[float, Field(ge=0, le=1e6)] = 0.0

    @field_validator("address")
    @classmethod
    def _port_in_range(cls, v: str) -> str:
        port = int(v.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ValueError("port out of range")
        return v

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


class Vitals(BaseModel):
    """JSON vitals served at ``GET /telemetry`` by every component."""

    model_config = ConfigDict(extra="allow")

    id: str
    component: Literal["backend", "proxy", "governator", "serve"]
    version: str
    state: NodeState
    uptime_s: float
    models: list[str] = []
    capacity: int = 0
    in_flight: int = 0
    queue_depth: int = 0
    tokens_per_second: float = 0.0
    requests_total: int = 0
    # Backend nodes
    active_sequences: int | None = None
    context_length: int | None = None
    tokens_generated: int | None = None
    # Prompt tokens whose KV came from the prefix cache, and those computed afresh.
    prompt_tokens_reused: int | None = None
    prompt_tokens_computed: int | None = None
    # The proxy: its view of every node
    nodes: list[dict[str, Any]] | None = None

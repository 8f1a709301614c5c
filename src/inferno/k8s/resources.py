"""Inferno's custom resources (group ``inferno.dev``, version ``v1alpha1``).

These pydantic models are the one definition of each resource: the CRDs' OpenAPI schemas
are generated from them (``crds.py``), and the operator parses every object it reconciles
with them, so the cluster refuses what the operator would refuse. Field names are the
Kubernetes convention (camelCase) on the wire and snake_case in Python.

- ``InfernoModel``: a model the model manager can pull (its source, pinned digest, format
  and engine, serving defaults); the operator downloads it once into a cache volume.
- ``InfernoDeployment``: nodes serving one model (replicas min/max, resources, engine
  arguments, scale-to-zero); it has a scale subresource, which the governator drives.
- ``InfernoRoute``: a public model name sent to one or more deployments by weight (canary).
- ``InfernoScalingPolicy``: the governator's policy for one deployment.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "inferno.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Name = Annotated[str, Field(min_length=1, max_length=63,
                            pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[mkMGTPE]|e[0-9]+)?$")]


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, defaults filled in)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Condition(_Spec):
    """A standard status condition (``metav1.Condition``)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(max_length=1024)] = ""
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Status(_Spec):
    model_config = ConfigDict(extra="allow")  # the operator adds kind-specific fields
    observed_generation: int | None = None
    conditions: list[Condition] = []


# ---- InfernoModel ----
class ServingDefaults(_Spec):
    n_ctx: Annotated[int, Field(ge=64, le=1_048_576)] = 4096
    parallel: Annotated[int, Field(ge=1, le=256)] = 4
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    quantize: Literal["auto", "native", "q8_0", "q5_0", "q4_0", "iq4_nl", "f16"] = "auto"


class ModelSpec(_Spec):
    # A model-manager reference: hf://ORG/REPO[/FILE|:QUANT][@REV], ollama://NS/NAME:TAG,
    # https://.../file.gguf, file:///..., or a catalog id.
    source: Annotated[str, Field(min_length=1, max_length=2048)]
    # The expected content digest; the download is verified against it.
    digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    format: Literal["gguf", "onnx"] = "gguf"
    engine: Literal["llamacpp", "onnx"] = "llamacpp"
    # The name clients ask for (default: the resource's name).
    served_name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    serving: ServingDefaults = ServingDefaults()
    # The cache volume the model is downloaded into (a PersistentVolumeClaim).
    cache_size: Quantity = "10Gi"
    storage_class_name: str | None = None


# ---- InfernoDeployment ----
class Resources(_Spec):
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}


class ScaleToZero(_Spec):
    enabled: bool = False
    # How long the proxy holds a request while the first replica starts.
    hold_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # Requests held at once; past this the proxy answers 429 with Retry-After.
    max_held_requests: Annotated[int, Field(ge=1, le=100_000)] = 64
    # Idle time before the last replica is removed.
    idle_seconds: Annotated[float, Field(ge=0, le=86_400)] = 300.0


class DeploymentSpec(_Spec):
    model_ref: Name
    # Driven by the governator through the scale subresource, within min/max.
    replicas: Annotated[int, Field(ge=0, le=1024)] = 1
    min_replicas: Annotated[int, Field(ge=0, le=1024)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1024)] = 4
    # Overrides of the model's serving defaults.
    n_ctx: Annotated[int, Field(ge=64, le=1_048_576)] | None = None
    parallel: Annotated[int, Field(ge=1, le=256)] | None = None
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    gpu_layers: Annotated[int, Field(ge=-1, le=100_000)] = 0
    # More `inferno backend` arguments, passed as given.
    engine_args: Annotated[list[Annotated[str, Field(max_length=4096)]],
                           Field(max_length=64)] = []
    resources: Resources = Resources()
    scale_to_zero: ScaleToZero = ScaleToZero()
    image: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    node_selector: dict[str, str] = {}

    @model_validator(mode="after")
    def _bounds(self) -> DeploymentSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) > maxReplicas "
                             f"({self.max_replicas})")
        if self.min_replicas == 0 and not self.scale_to_zero.enabled:
            raise ValueError("minReplicas 0 needs scaleToZero.enabled")
        return self


# ---- InfernoRoute ----
class RouteBackend(_Spec):
    deployment: Name
    weight: Annotated[int, Field(ge=0, le=1000)] = 100


class RouteSpec(_Spec):
    # The model name clients send.
    model: Annotated[str, Field(min_length=1, max_length=256)]
    backends: Annotated[list[RouteBackend], Field(min_length=1, max_length=16)]
    # A routing profile of the proxy (default: the proxy's).
    profile: Annotated[str, Field(min_length=1, max_length=63)] | None = None

    @model_validator(mode="after")
    def _weights(self) -> RouteSpec:
        if sum(b.weight for b in self.backends) == 0:
            raise ValueError("at least one backend needs a weight above 0")
        if len({b.deployment for b in self.backends}) != len(self.backends):
            raise ValueError("each deployment may appear once")
        return self


# ---- InfernoScalingPolicy ----
class ScalingTargets(_Spec):
    queue_wait_p95_seconds: Annotated[float, Field(gt=0)] = 2.0
    ttft_p95_seconds: Annotated[float, Field(gt=0)] = 5.0
    in_flight_per_node: Annotated[float, Field(gt=0)] | None = None


class NodePrice(_Spec):
    usd_per_hour: Annotated[float, Field(ge=0)] = 0.05
    capacity: Annotated[int, Field(ge=1, le=4096)] = 2
    startup_seconds: Annotated[float, Field(ge=0)] = 10.0
    tokens_per_second: Annotated[float, Field(gt=0)] = 50.0


class ScalingPolicySpec(_Spec):
    deployment: Name
    targets: ScalingTargets = ScalingTargets()
    stable_window_seconds: Annotated[float, Field(gt=0)] = 60.0
    panic_window_seconds: Annotated[float, Field(gt=0)] = 6.0
    panic_threshold: Annotated[float, Field(ge=1)] = 2.0
    scale_up_cooldown_seconds: Annotated[float, Field(ge=0)] = 2.0
    scale_down_cooldown_seconds: Annotated[float, Field(ge=0)] = 20.0
    scale_down_delay_seconds: Annotated[float, Field(ge=0)] = 30.0
    scale_down_step: Annotated[int, Field(ge=1)] = 1
    node_price: NodePrice = NodePrice()

    @model_validator(mode="after")
    def _windows(self) -> ScalingPolicySpec:
        if self.panic_window_seconds > self.stable_window_seconds:
            raise ValueError("panicWindowSeconds must not exceed stableWindowSeconds")
        return self

    def pool(self, model: str, min_replicas: int, max_replicas: int) -> dict[str, Any]:
        """The governator's pool entry (its policy file's schema) for this policy."""
        t = self.targets
        targets: dict[str, Any] = {"queue_wait_p95_s": t.queue_wait_p95_seconds,
                                   "ttft_p95_s": t.ttft_p95_seconds}
        if t.in_flight_per_node is not None:
            targets["in_flight_per_node"] = t.in_flight_per_node
        return {"model": model, "node_types": [self.deployment],
                "min_replicas": min_replicas, "max_replicas": max_replicas,
                "targets": targets, "stable_window_s": self.stable_window_seconds,
                "panic_window_s": self.panic_window_seconds,
                "panic_threshold": self.panic_threshold,
                "scale_up_cooldown_s": self.scale_up_cooldown_seconds,
                "scale_down_cooldown_s": self.scale_down_cooldown_seconds,
                "scale_down_delay_s": self.scale_down_delay_seconds,
                "scale_down_step": self.scale_down_step}

    def node_type(self) -> dict[str, Any]:
        """The governator's price-list entry for this deployment's nodes."""
        p = self.node_price
        return {"usd_per_hour": p.usd_per_hour, "capacity": p.capacity,
                "startup_s": p.startup_seconds, "tokens_per_second": p.tokens_per_second}


class Kind:
    """One custom resource kind: its names, spec model, and what ``kubectl get`` shows."""

    def __init__(self, kind: str, plural: str, short: list[str], spec: type[_Spec],
                 columns: list[tuple[str, str, str]], *, scale: bool = False) -> None:
        self.kind = kind
        self.plural = plural
        self.singular = kind.lower()
        self.short = short
        self.spec = spec
        self.columns = columns  # (name, type, JSONPath)
        self.scale = scale

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


_READY = ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status')
_AGE = ("Age", "date", ".metadata.creationTimestamp")

MODEL = Kind("InfernoModel", "infernomodels", ["imodel"], ModelSpec, [
    ("Source", "string", ".spec.source"), ("Engine", "string", ".spec.engine"),
    ("Downloaded", "string", '.status.conditions[?(@.type=="Downloaded")].status'), _AGE])
DEPLOYMENT = Kind("InfernoDeployment", "infernodeployments", ["idep"], DeploymentSpec, [
    ("Model", "string", ".spec.modelRef"), ("Desired", "integer", ".spec.replicas"),
    ("Ready-Replicas", "integer", ".status.readyReplicas"), _READY, _AGE], scale=True)
ROUTE = Kind("InfernoRoute", "infernoroutes", ["iroute"], RouteSpec, [
    ("Model", "string", ".spec.model"), _READY, _AGE])
SCALING_POLICY = Kind("InfernoScalingPolicy", "infernoscalingpolicies", ["ipolicy"],
                      ScalingPolicySpec, [("Deployment", "string", ".spec.deployment"),
                                          _READY, _AGE])
KINDS: list[Kind] = [MODEL, DEPLOYMENT, ROUTE, SCALING_POLICY]

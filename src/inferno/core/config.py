"""Each component's settings: loaded once at the edge (``inferno.core.settings``:
``load_settings``, precedence and error messages), then passed down through constructors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from inferno.core.paths import data_dir
from inferno.core.routing_config import ROUTING_PRESETS, RoutingConfig, _routing
from inferno.core.settings import (
    Port,
    UnprefixedEnv,
    YamlSection,
    _split_csv,
    parse_duration,
)


class ComponentSettings(BaseSettings):
    section: ClassVar[str] = ""
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, UnprefixedEnv(settings_cls),
                YamlSection(settings_cls))


class BackendSettings(ComponentSettings):
    section: ClassVar[str] = "backend"
    model_config = SettingsConfigDict(env_prefix="INFERNO_BACKEND_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Port = 8000
    ops_port: Port = 6100
    # Catalog ids (e.g. smollm2-135m) or paths to GGUF files, loaded at start and kept
    # (pinned) until unloaded through the API; "a,b" from the environment or YAML.
    model: Annotated[list[str], NoDecode, Field(min_length=1, max_length=32)] = [
        "smollm2-135m"]
    # The name clients use for the first model; defaults to the catalog id or the stem.
    served_name: str | None = None
    # Refs the node may load on demand (a request names it, or POST /v1/models/load).
    models_available: Annotated[list[str], NoDecode, Field(max_length=64)] = []
    # How long a model loaded at run time stays after its last request (Ollama's meaning):
    # seconds or a duration ("300", "5m", "1h"), -1 forever, 0 unload after each request.
    keep_alive: float = 300.0
    # Bytes the loaded models may take (their files' sizes); 0 means unlimited. Loading
    # beyond it first evicts the least recently used idle model that is not pinned.
    memory_budget: Annotated[int, Field(ge=0)] = 0
    engine: Literal["llamacpp", "onnx", "openai", "gemini", "fake"] = "llamacpp"
    n_ctx: Annotated[int, Field(ge=64, le=1_048_576)] = 4096
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    # Sequences generated at once; remote engines: requests in flight to the provider.
    parallel: Annotated[int, Field(ge=1, le=256)] = 4
    # llama.cpp engine: load a converted copy of the GGUF (built once, cached under
    # data_dir/gguf). q8_0 batches far better than the shipped Q4_1 on CPU and is
    # near-lossless; q4_0/iq4_nl/q5_0 are faster but lossy. auto: q8_0 for a small
    # Q4_1/Q5_1 model when parallel > 1 and no GPU, else native. See bench/README.md.
    quantize: Literal["auto", "native", "q8_0", "q5_0", "q4_0", "iq4_nl", "f16"] = "auto"
    # llama.cpp engine: layers offloaded to the GPU of a GPU build (make setup GPU=cuda|vulkan);
    # 0 keeps everything on the CPU, -1 offloads every layer.
    gpu_layers: Annotated[int, Field(ge=-1, le=100_000)] = 0
    # llama.cpp engine: reuse the KV of a shared prompt prefix (system prompt, earlier
    # turns) across requests instead of recomputing it. Output is identical either way.
    prefix_cache: bool = True
    # llama.cpp engine: how long generating sequences may pause (milliseconds) while
    # newly arrived prompts are prefilled, so a burst reaches its first tokens sooner;
    # 0 mixes every prefill step with a token for each generating sequence.
    prefill_hold_ms: Annotated[float, Field(ge=0, le=10_000)] = 200.0
    node_id: str | None = None
    # Where built artefacts are cached (the ONNX graph); default $INFERNO_DATA_DIR or
    # ~/.cache/inferno.
    data_dir: Path | None = None
    # Embedding engines: texts per model call, and how long an idle model waits for a
    # batch to fill (seconds) before running what it has.
    embed_batch_size: Annotated[int, Field(ge=1, le=1024)] = 32
    embed_batch_wait: Annotated[float, Field(ge=0, le=1)] = 0.002
    # Remote engines (openai, gemini): the provider's base URL (e.g. http://host:8000/v1,
    # https://api.openai.com/v1, https://generativelanguage.googleapis.com/v1beta), the
    # provider's model name (default: model), and the credential: the name of the
    # environment variable that holds it (preferred), or the key itself. Never logged.
    remote_url: str | None = None
    remote_model: str | None = None
    api_key_env: str | None = None
    api_key: SecretStr | None = None
    remote_timeout: Annotated[float, Field(gt=0, le=3600)] = 300.0
    # What a token costs on this node (USD per million), reported for cost-aware routing.
    price_per_mtok_input: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    price_per_mtok_output: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    # host:port of the proxy's ops server; when set the node registers and renews a lease.
    discovery_lb: str | None = None
    # The proxy's node token (one of its node_tokens), sent when registering.
    node_token: SecretStr | None = None
    advertise_host: str | None = None
    # Renewals every 7.5-10 s (jittered) under a 30 s lease: the proxy's idle cost grows
    # with renewals per second (bench/README.md "Control plane"); a dead node still leaves
    # rotation within ~16 s through the proxy's active checks, before its lease ends.
    heartbeat_interval: Annotated[float, Field(gt=0, le=600)] = 10.0
    lease_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # Fake engine only: seconds per generated token (for tests and demos).
    fake_token_delay: Annotated[float, Field(ge=0, le=10)] = 0.0

    _csv = field_validator("model", "models_available", mode="before")(_split_csv)

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, v: Any) -> float:
        return parse_duration(v)


class ProxySettings(ComponentSettings):
    section: ClassVar[str] = "proxy"
    model_config = SettingsConfigDict(env_prefix="INFERNO_PROXY_", extra="forbid", frozen=True)
    # Shared by every component that uses them: also read without the component prefix.
    unprefixed_env: ClassVar[dict[str, str]] = {"database_url": "INFERNO_DATABASE_URL",
                                                "redis_url": "INFERNO_REDIS_URL"}

    host: str = "127.0.0.1"
    port: Port = 8080
    ops_port: Port = 6100
    # Static backends: host:port of each node's inference API (their ops port is assumed 6100
    # unless given as host:port/ops_port).
    backends: Annotated[list[str], NoDecode] = []
    # A preset name (least-outstanding, round-robin, prefix-affinity, power-of-two, cost)
    # or a full mapping of plugins and profiles.
    routing: RoutingConfig = ROUTING_PRESETS["least-outstanding"]
    # A YAML file whose `routing:` replaces the above at start, when the file exists
    # (Kubernetes: the operator's inferno-routes ConfigMap, mounted optionally).
    routing_file: Path | None = None
    # Lease of a registration that does not state its own.
    default_lease: Annotated[float, Field(gt=0, le=3600)] = 5.0
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 2.0
    # Time allowed for a node to send response headers (non-streaming: the whole generation).
    response_timeout: Annotated[float, Field(gt=0, le=3600)] = 300.0
    # Longest pause between two streamed chunks before the stream is abandoned.
    stream_idle_timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # One deadline for a request across all its attempts.
    request_timeout: Annotated[float, Field(gt=0, le=3600)] = 600.0
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    # Retries allowed: this fraction of recent requests plus a floor per second.
    retry_budget_ratio: Annotated[float, Field(ge=0, le=10)] = 0.2
    retry_budget_min_per_s: Annotated[float, Field(ge=0, le=10_000)] = 3.0
    # Where ops /health is answered, so a saturated proxy still looks alive: "process" (a
    # small front process with its own GIL owns the ops port and relays other routes),
    # "thread" (a thread of the proxy, waits for the GIL), "loop" (the main event loop).
    ops_health: Literal["process", "thread", "loop"] = "process"
    # Proxy processes serving the API port together (SO_REUSEPORT); 0: one per core.
    workers: Annotated[int, Field(ge=0, le=256)] = 0
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    max_body_size: Annotated[int, Field(ge=1024, le=1 << 30)] = 4 * 1024 * 1024
    # Passive outlier detection / circuit breaker per node.
    eject_after_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    base_ejection: Annotated[float, Field(gt=0, le=3600)] = 5.0
    max_ejection: Annotated[float, Field(gt=0, le=86400)] = 120.0
    max_ejected_percent: Annotated[float, Field(ge=0, le=100)] = 50.0
    # Active checks of each node's ops /health.
    health_interval: Annotated[float, Field(gt=0, le=600)] = 1.0
    health_timeout: Annotated[float, Field(gt=0, le=600)] = 1.0
    healthy_after: Annotated[int, Field(ge=1, le=100)] = 2
    unhealthy_after: Annotated[int, Field(ge=1, le=100)] = 2
    # Admission: requests in flight per node (0: 4 x the node's capacity), then a bounded
    # queue in the proxy; beyond it, or after queue_wait, the client gets 429/503 at once.
    max_per_node: Annotated[int, Field(ge=0, le=100_000)] = 0
    queue_size: Annotated[int, Field(ge=0, le=1_000_000)] = 512
    queue_wait: Annotated[float, Field(ge=0, le=3600)] = 10.0
    max_header_size: Annotated[int, Field(ge=1024, le=1 << 20)] = 64 * 1024
    # The client side of the API port: a request head must arrive within header_timeout,
    # its whole body within body_timeout of the head (bytes trickling in do not extend
    # it: 408), and an idle keep-alive connection is closed after keepalive_timeout. A
    # client that stops reading a stream is cut off after stream_idle_timeout.
    header_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    body_timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    keepalive_timeout: Annotated[float, Field(gt=0, le=3600)] = 75.0
    # Past max_connections a new connection gets 503 and is closed; a connection's
    # max_requests_per_connection-th request is answered with "connection: close".
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    max_requests_per_connection: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000
    # Scale from zero (README "Scale to zero"): a request for a standby model with no ready
    # node waits for one (the governator starts it) instead of failing. Standby: these
    # models (the Kubernetes operator also sets them at run time), and, with standby_ttl
    # above 0, every model the pool served within that many seconds. Off by default: a
    # proxy without an autoscaler behind it answers at once that no node serves a model.
    # At most max_held requests wait per model (beyond: 429), each up to hold_timeout
    # seconds (then: 503).
    standby_models: Annotated[list[str], NoDecode] = []
    standby_ttl: Annotated[float, Field(ge=0, le=30 * 86400)] = 0.0
    hold_timeout: Annotated[float, Field(gt=0, le=3600)] = 120.0
    max_held: Annotated[int, Field(ge=1, le=1_000_000)] = 64

    # --- Store, auth, limits, cache, request log (README "Keys, limits, cache and logs").
    # Where the embedded SQLite database and the disk cache live
    # (default $INFERNO_DATA_DIR, else $XDG_DATA_HOME/inferno or ~/.local/share/inferno).
    data_dir: Path = Field(default_factory=data_dir)
    # SQLAlchemy URL (sqlite+aiosqlite:///..., postgresql+asyncpg://...); unset: SQLite in
    # data_dir; "none": no database (no stored keys, no request log).
    database_url: SecretStr | None = None
    # PostgreSQL: keep Inferno's tables in this schema (created if missing).
    database_schema: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")] | None = None
    # Shared rate-limit counters for several proxy replicas; unset: in-process counters.
    redis_url: SecretStr | None = None
    # Key prefix of the rate-limit counters (replicas that share limits share the prefix).
    redis_prefix: Annotated[str, Field(min_length=1, max_length=100)] = "inferno:rl"
    # auto: on once an API key exists or a JWT key is configured; off only on a loopback
    # host (elsewhere the proxy refuses to start). none: off, loudly. on: always.
    auth: Literal["auto", "on", "none"] = "auto"
    keys_refresh_interval: Annotated[float, Field(gt=0, le=3600)] = 1.0
    # JWT bearer tokens: an HS* secret, or an RS*/ES* public key (PEM file) or a JWKS file.
    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = []
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: Annotated[float, Field(ge=0, le=300)] = 10.0
    # Limits for callers whose key or token states none (0 = unlimited), and per model.
    default_rpm: Annotated[int, Field(ge=0)] = 0
    default_tpm: Annotated[int, Field(ge=0)] = 0
    model_limits: dict[str, dict[Literal["rpm", "tpm"], Annotated[int, Field(ge=0)]]] = {}
    # Requests-per-minute bursts: up to this many seconds' worth of requests at once.
    limit_burst_seconds: Annotated[float, Field(gt=0, le=60)] = 0.3
    # Tokens reserved at admission when a request states no max_tokens.
    default_reserve_tokens: Annotated[int, Field(ge=1, le=1_048_576)] = 256
    # Registration: shared node tokens (any one of them), and where nodes may live.
    node_tokens: Annotated[list[SecretStr], NoDecode] = []
    registration_allowlist: Annotated[list[str], NoDecode] = [
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
        "fc00::/7", "localhost"]
    # Request log: rows are written in the background; payloads only when enabled.
    log_payloads: bool = False
    log_queue_size: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    # Rows per transaction. Large, because under a saturated event loop each round trip to
    # the database thread waits for the GIL: 500-row batches fell behind at ~4,800 rows/s.
    log_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 4096
    log_flush_interval: Annotated[float, Field(gt=0, le=60)] = 0.5
    # USD per million tokens, per model: {model: {prompt: x, completion: y}}.
    prices: dict[str, dict[Literal["prompt", "completion"], Annotated[float, Field(ge=0)]]] = {}
    # Exact-match response cache (temperature 0, or the x-inferno-cache: on header).
    cache: bool = False
    cache_max_bytes: Annotated[int, Field(ge=0, le=1 << 40)] = 64 * 1024 * 1024
    cache_ttl: Annotated[float, Field(gt=0, le=30 * 86400)] = 3600.0
    # Compressed second level on disk under data_dir/cache (0 disables it).
    cache_disk_max_bytes: Annotated[int, Field(ge=0, le=1 << 44)] = 1024 * 1024 * 1024
    # The web dashboard at /ui on the API port (admin only; off: 404).
    ui: bool = True
    # Alerts the proxy evaluates (proxy/alert_rules.py), POSTed as Slack-compatible JSON to
    # every webhook; none: alerting off. Silences: "rule" or "rule/subject" (glob).
    alert_webhooks: Annotated[list[SecretStr], NoDecode] = []
    alert_interval: Annotated[float, Field(gt=0, le=3600)] = 15.0
    alert_repeat_interval: Annotated[float, Field(gt=0)] = 3600.0
    alert_silences: Annotated[list[str], NoDecode] = []
    alert_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    alert_min_requests: Annotated[int, Field(ge=1)] = 20
    alert_ttft_p95_s: Annotated[float, Field(gt=0)] = 2.0
    alert_daily_budget_usd: Annotated[float | None, Field(ge=0)] = None

    _csv = field_validator("backends", "jwt_algorithms", "registration_allowlist",
                           "node_tokens", "alert_webhooks", "alert_silences",
                           "standby_models", mode="before")(_split_csv)
    _routing = field_validator("routing", mode="before")(_routing)


class BatchSettings(ComponentSettings):
    """The Batch and Files API: served by the proxy, whose workers run batch items; also
    read by ``inferno batch worker`` processes (which add proxy_url, api_key and the store)."""

    section: ClassVar[str] = "batch"
    model_config = SettingsConfigDict(env_prefix="INFERNO_BATCH_", extra="forbid", frozen=True)
    unprefixed_env: ClassVar[dict[str, str]] = {"database_url": "INFERNO_DATABASE_URL"}

    # The proxy serves /v1/files and /v1/batches (needs its database).
    enabled: bool = True
    # Batch items in flight at once in this process (0: the proxy runs none; workers do).
    workers: Annotated[int, Field(ge=0, le=10_000)] = 8
    # Tries per item for retryable failures (429, 5xx, timeouts, a dead node); then the
    # item goes to the error file. Back-off doubles from retry_base up to retry_max, or
    # follows the answer's Retry-After when longer.
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    retry_base: Annotated[float, Field(ge=0, le=3600)] = 1.0
    retry_max: Annotated[float, Field(ge=0, le=86400)] = 60.0
    # A claimed item is a worker's for this long, renewed while it runs; a dead worker's
    # items are taken over once it runs out.
    lease: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # How often idle workers look for due items and the supervisor for due steps.
    poll_interval: Annotated[float, Field(gt=0, le=60)] = 0.5
    max_lines: Annotated[int, Field(ge=1, le=10_000_000)] = 50_000
    files_max_size: Annotated[int, Field(ge=1024, le=1 << 40)] = 200 * 1024 * 1024
    # A scheduled run missed while nothing was running: run it once at start, or skip it.
    missed_runs: Literal["once", "skip"] = "once"
    # `inferno batch worker`: the proxy to send items to, an admin key (it acts on behalf
    # of each batch's owner), and the proxy's store.
    proxy_url: str = "http://127.0.0.1:8080"
    api_key: SecretStr | None = None
    data_dir: Path = Field(default_factory=data_dir)
    database_url: SecretStr | None = None
    database_schema: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")] | None = None


class ServeSettings(ComponentSettings):
    section: ClassVar[str] = "serve"
    model_config = SettingsConfigDict(env_prefix="INFERNO_SERVE_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Port = 8080
    ops_port: Port = 6100
    nodes: Annotated[int, Field(ge=1, le=64)] = 2
    model: str = "smollm2-135m"
    engine: Literal["llamacpp", "fake"] = "llamacpp"
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    parallel: Annotated[int, Field(ge=1, le=256)] = 4
    n_ctx: Annotated[int, Field(ge=64, le=1_048_576)] = 4096
    # First inference and ops ports of the nodes; node i uses base + i.
    node_port_base: Port = 8100
    node_ops_port_base: Port = 6200


class GovernatorSettings(ComponentSettings):
    """The governator: reads telemetry, applies the scale policy, drives a provider."""

    section: ClassVar[str] = "governator"
    model_config = SettingsConfigDict(env_prefix="INFERNO_GOVERNATOR_", extra="forbid",
                                      frozen=True)
    # Shared with the proxy: also read without the component prefix.
    unprefixed_env: ClassVar[dict[str, str]] = {"database_url": "INFERNO_DATABASE_URL"}

    host: str = "127.0.0.1"
    ops_port: Port = 6300
    # host:port of the proxy's ops server (telemetry in, drains out).
    proxy_ops: str = "127.0.0.1:6100"
    provider: Literal["local", "kubernetes"] = "local"
    # Policy and price list YAML; without them a single default pool is governed.
    policy_file: Path | None = None
    prices_file: Path | None = None
    # Used by the default policy (no policy file): the one pool's model and bounds.
    model: str = "smollm2-135m"
    min_replicas: Annotated[int, Field(ge=0, le=256)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=256)] = 4
    interval: Annotated[float, Field(gt=0, le=600)] = 1.0
    # Samples and decisions go to the shared store: a SQLAlchemy URL (sqlite:///path.db,
    # postgresql+asyncpg://...); unset: SQLite in data_dir (the proxy's file by default);
    # "memory": kept in memory only.
    data_dir: Path = Field(default_factory=data_dir)
    database_url: SecretStr | None = None
    # PostgreSQL: keep the tables in this schema (created if missing).
    database_schema: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")] | None = None
    raw_retention_s: Annotated[float, Field(gt=0)] = 3600.0
    rollup_retention_s: Annotated[float, Field(gt=0)] = 7 * 86400.0
    # Background writer: rows waiting at most (beyond: dropped and counted), per batch,
    # and how often a partial batch is written.
    store_queue_size: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    store_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    store_flush_interval: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Local provider: how each node process is started.
    engine: Literal["llamacpp", "fake"] = "llamacpp"
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    parallel: Annotated[int, Field(ge=1, le=256)] = 4
    n_ctx: Annotated[int, Field(ge=64, le=1_048_576)] = 4096
    node_port_base: Port = 0  # 0: any free port
    node_ops_port_base: Port = 0
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # The policy files are watched while running (content polled every reload_interval
    # seconds; 0: never): a valid change is applied, a bad one logged and ignored.
    reload_interval: Annotated[float, Field(ge=0, le=3600)] = 5.0
    # A policy file not there is no pools yet rather than an error (Kubernetes: the
    # governator's ConfigMap, mounted before any InfernoScalingPolicy exists).
    policy_optional: bool = False
    # Kubernetes provider.
    k8s_namespace: str = "default"
    k8s_deployment: str = "inferno-backend"
    k8s_node_ops_port: Port = 6100
    # Pool (model) -> what scales it: a Deployment name or infernodeployment/NAME; pools
    # not named here scale k8s_deployment (one pool) or k8s_deployment-<i>. Also read from
    # deployments_file (a YAML mapping, reloaded with the policy; it wins).
    k8s_deployments: dict[str, str] = {}
    deployments_file: Path | None = None

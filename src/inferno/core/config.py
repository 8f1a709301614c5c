"""Settings: loaded once at the edge, then passed down through constructors.

Precedence, highest first: command-line flags > environment (``INFERNO_<COMPONENT>_<FIELD>``)
> the YAML file given with ``--config`` (its ``<component>:`` section) > defaults.
:func:`load_settings` is the only entry point; a bad value raises :class:`ConfigError`
whose message names the field and where the value came from.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from inferno.core.errors import ConfigError

Port = Annotated[int, Field(ge=0, le=65535)]
_yaml_section: ContextVar[dict[str, Any] | None] = ContextVar("_yaml_section", default=None)


class _YamlSection(PydanticBaseSettingsSource):
    """Feeds the already-read YAML section of the component being loaded."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        data = _yaml_section.get() or {}
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_section.get() or {})


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
        return (init_settings, env_settings, _YamlSection(settings_cls))


def _split_csv(v: Any) -> Any:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


class BackendSettings(ComponentSettings):
    section: ClassVar[str] = "backend"
    model_config = SettingsConfigDict(env_prefix="INFERNO_BACKEND_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Port = 8000
    ops_port: Port = 6100
    # A catalog id (e.g. smollm2-135m) or a path to a GGUF file.
    model: str = "smollm2-135m"
    # The name clients use; defaults to the catalog id or the file's stem.
    served_name: str | None = None
    engine: Literal["llamacpp", "fake"] = "llamacpp"
    n_ctx: Annotated[int, Field(ge=64, le=1_048_576)] = 4096
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    parallel: Annotated[int, Field(ge=1, le=256)] = 4
    node_id: str | None = None
    # host:port of the proxy's ops server; when set the node registers and renews a lease.
    discovery_lb: str | None = None
    advertise_host: str | None = None
    heartbeat_interval: Annotated[float, Field(gt=0, le=600)] = 1.0
    lease_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # Fake engine only: seconds per generated token (for tests and demos).
    fake_token_delay: Annotated[float, Field(ge=0, le=10)] = 0.0


class ProxySettings(ComponentSettings):
    section: ClassVar[str] = "proxy"
    model_config = SettingsConfigDict(env_prefix="INFERNO_PROXY_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Port = 8080
    ops_port: Port = 6100
    # Static backends: host:port of each node's inference API (their ops port is assumed 6100
    # unless given as host:port/ops_port).
    backends: Annotated[list[str], NoDecode] = []
    routing: Literal["least-outstanding", "round-robin"] = "least-outstanding"
    # Lease of a registration that does not state its own.
    default_lease: Annotated[float, Field(gt=0, le=3600)] = 5.0
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 2.0
    # Time allowed for a node to send response headers (non-streaming: the whole generation).
    response_timeout: Annotated[float, Field(gt=0, le=3600)] = 300.0
    # Longest pause between two streamed chunks before the stream is abandoned.
    stream_idle_timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    max_body_size: Annotated[int, Field(ge=1024, le=1 << 30)] = 4 * 1024 * 1024

    _csv = field_validator("backends", mode="before")(_split_csv)


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


S = TypeVar("S", bound=ComponentSettings)


def read_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def load_settings(cls: type[S], *, cli: dict[str, Any] | None = None,
                  config_file: Path | None = None) -> S:
    """Build ``cls`` from CLI values (``None`` means "not given"), env, YAML and defaults."""
    given = {k: v for k, v in (cli or {}).items() if v is not None}
    section = read_yaml(config_file).get(cls.section) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"config file {config_file}: section '{cls.section}' must be a mapping")
    token = _yaml_section.set(section)
    try:
        return cls(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc, given, section, config_file)) from exc
    finally:
        _yaml_section.reset(token)


def _describe(cls: type[ComponentSettings], exc: ValidationError, cli: dict[str, Any],
              section: dict[str, Any], config_file: Path | None) -> str:
    lines = []
    prefix = str(cls.model_config.get("env_prefix", ""))
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err["loc"] else "?"
        env_name = f"{prefix}{name}".upper()
        if name in cli:
            source = f"command line (--{name.replace('_', '-')})"
        elif env_name in os.environ:
            source = f"environment variable {env_name}"
        elif name in section:
            source = f"config file {config_file} ({cls.section}.{name})"
        else:
            source = "default"
        lines.append(f"invalid setting '{name}' from {source}: {err['msg']}")
    return "; ".join(lines)

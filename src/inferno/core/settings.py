"""The settings machinery: where values come from, and how errors name them.

Precedence, highest first: command-line flags > environment (``INFERNO_<COMPONENT>_<FIELD>``)
> the YAML file given with ``--config`` (its ``<component>:`` section) > defaults.
:func:`load_settings` is the only entry point; a bad value raises :class:`ConfigError`
whose message names the field and where the value came from. The components' settings
classes (``config.py``) derive from ``ComponentSettings``, which reads its sources here.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from inferno.core.errors import ConfigError

Port = Annotated[int, Field(ge=0, le=65535)]
_yaml_section: ContextVar[dict[str, Any] | None] = ContextVar("_yaml_section", default=None)


class YamlSection(PydanticBaseSettingsSource):
    """Feeds the already-read YAML section of the component being loaded."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        data = _yaml_section.get() or {}
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_section.get() or {})


class UnprefixedEnv(PydanticBaseSettingsSource):
    """``INFERNO_DATABASE_URL`` and friends: below the prefixed variable, above YAML."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        names: dict[str, str] = getattr(self.settings_cls, "unprefixed_env", {})
        return {f: os.environ[e] for f, e in names.items() if os.environ.get(e)}


def _split_csv(v: Any) -> Any:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return [p for x in v for p in _split_csv(x)]  # --model a,b --model c
    return v


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(v: Any) -> float:
    """Seconds from ``300``, ``"300"``, ``"5m"``, ``"1h30m"``, ``"7d"``; any negative is -1
    (forever)."""
    if isinstance(v, bool):
        raise ValueError("expected a duration such as 300, 5m or -1")
    if isinstance(v, (int, float)):
        return -1.0 if v < 0 else float(v)
    if isinstance(v, str):
        text = v.strip().lower()
        try:
            return parse_duration(float(text))
        except ValueError:
            pass
        if text.startswith("-"):
            return -1.0
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNIT[u] for n, u in parts)
    raise ValueError(f"expected a duration such as 300, 5m or -1, got {v!r}")


S = TypeVar("S", bound=BaseSettings)


def load_yaml(path: Path, what: str = "") -> Any:
    """A YAML file's content (None when empty); a file that cannot be read or parsed is a
    ConfigError naming it (``what``: how to call it, e.g. "config file")."""
    name = f"{what} {path}" if what else str(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {name}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name} is not valid YAML: {exc}") from exc


def read_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = load_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def load_settings(cls: type[S], *, cli: dict[str, Any] | None = None,
                  config_file: Path | None = None) -> S:
    """Build ``cls`` from CLI values (``None`` means "not given"), env, YAML and defaults."""
    given = {k: v for k, v in (cli or {}).items() if v is not None}
    name = _section_of(cls)
    section = read_yaml(config_file).get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"config file {config_file}: section '{name}' must be a mapping")
    token = _yaml_section.set(section)
    try:
        return cls(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc, given, section, config_file)) from exc
    finally:
        _yaml_section.reset(token)


def _section_of(cls: type[BaseSettings]) -> str:
    """The component's YAML section (``ComponentSettings.section``)."""
    return str(getattr(cls, "section", ""))


def _describe(cls: type[BaseSettings], exc: ValidationError, cli: dict[str, Any],
              section: dict[str, Any], config_file: Path | None) -> str:
    """One line per error: the setting (dotted when nested) and where its value came from,
    checked in precedence order (the source pydantic-settings took it from)."""
    lines = []
    prefix = str(cls.model_config.get("env_prefix", ""))
    unprefixed: dict[str, str] = getattr(cls, "unprefixed_env", {})
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err["loc"] else "?"
        path = ".".join(str(p) for p in err["loc"]) or "?"
        env_name = f"{prefix}{name}".upper()
        shared = unprefixed.get(name)
        if name in cli:
            source = f"command line (--{name.replace('_', '-')})"
        elif env_name in os.environ:
            source = f"environment variable {env_name}"
        elif shared and os.environ.get(shared):
            source = f"environment variable {shared}"
        elif name in section:
            source = f"config file {config_file} ({_section_of(cls)}.{path})"
        else:
            source = "default"
        lines.append(f"invalid setting '{path}' from {source}: {err['msg']}")
    return "; ".join(lines)

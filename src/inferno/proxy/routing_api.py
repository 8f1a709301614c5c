"""``GET /routing`` and ``PUT /routing`` (ops port): the proxy's routing at run time.

The body of a PUT is what the settings' ``routing:`` takes (a preset name, or a mapping of
plugins, profiles, ``canary`` and ``model_profiles``), validated by the same model; a bad
body is a 400 naming the field. A valid one becomes a new :class:`Router`, swapped in
whole: the request path reads the router once per request, so requests in flight finish
with the routing they started with and the next ones take the new one. Kubernetes'
operator PUTs the routes of every InfernoRoute here (and again periodically, so a proxy
that restarted gets them back). Setting routing needs what registering a node needs: a
node token, where node tokens are set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import yaml
from pydantic import TypeAdapter, ValidationError

from inferno.core.errors import ConfigError, InvalidRequest
from inferno.core.routing_config import RoutingConfig, _routing
from inferno.core.validation import invalid_request
from inferno.net import Request, Response
from inferno.proxy.router import Router
from inferno.proxy.routing import build_router

_ROUTING: TypeAdapter[RoutingConfig] = TypeAdapter(RoutingConfig)


def parse_routing(body: bytes) -> RoutingConfig:
    """A routing config from a JSON body, or a 400 that names the offending field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("Expected a JSON routing config (a preset name or a mapping "
                             "with profiles and default_profile).") from None
    try:
        config = _ROUTING.validate_python(_routing(data))
    except ValidationError as exc:
        raise invalid_request(exc) from exc
    except ValueError as exc:  # an unknown preset name
        raise InvalidRequest(str(exc), param="routing") from exc
    if config.default_profile not in config.profiles:
        raise InvalidRequest(f"Unknown default_profile '{config.default_profile}' (profiles: "
                             f"{', '.join(sorted(config.profiles))}).", param="default_profile")
    for model, profile in config.model_profiles.items():
        if profile not in config.profiles:
            raise InvalidRequest(f"Unknown profile '{profile}' for model '{model}'.",
                                 param=f"model_profiles.{model}")
    return config


def build(config: RoutingConfig) -> Router:
    """A ready router, or a 400 naming the plugins or profiles that cannot be built."""
    try:
        return Router(config, build_router(config))
    except ConfigError as exc:
        param = "plugins" if exc.message.startswith("routing plugin") else "profiles"
        raise InvalidRequest(exc.message, param=param) from exc


def load_routing_file(path: Path | None) -> RoutingConfig | None:
    """The ``routing:`` of a YAML file (the ``proxy.yaml`` of the operator's routes
    ConfigMap); None when there is no such file. Raises ConfigError naming the file."""
    if path is None or not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
        body = orjson.dumps(data.get("routing") if isinstance(data, dict) else None)
        return build(parse_routing(body)).config
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the routing file {path}: {exc}") from exc
    except InvalidRequest as exc:
        raise ConfigError(f"{path}: invalid field 'routing.{exc.param or ''}': "
                          f"{exc.message}") from exc


class RoutingAPI:
    """``current`` reads the router in use; ``install`` swaps a new one in; ``authorize``
    raises for a caller without a node token, where node tokens are set."""

    def __init__(self, current: Callable[[], Router], install: Callable[[Router], None],
                 authorize: Callable[[Request], object]) -> None:
        self._current = current
        self._install = install
        self._authorize = authorize

    async def get(self, req: Request) -> Response:
        return Response.json(self._current().config.model_dump(mode="json"))

    async def put(self, req: Request) -> Response:
        self._authorize(req)
        router = build(parse_routing(req.body))
        self._install(router)
        return Response.json(router.config.model_dump(mode="json"))

"""The admin API's calls, described once (method, path, query, body, how to read the
answer) and run by both clients; the answer's types; error bodies turned into the error
tree's classes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

from inferno.core.errors import InfernoError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, str | int | float] = field(default_factory=dict)
    json: dict[str, Any] | None = None
    ops: bool = False  # on the proxy's ops port (router state), not its API port
    governator: bool = False  # on the governator's ops port


def _from(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    prefix: str
    name: str
    scope: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    created_at: float
    revoked: bool


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    key: str  # the secret: shown once, never retrievable again
    name: str
    scope: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True, slots=True)
class Usage:
    day: str
    key_id: str | None
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    errors: int
    cache_hits: int


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[dict[str, Any]]  # newest first: seq, ts, actor, action, target, outcome...
    has_more: bool
    next_before: int | None  # pass as ``before`` for the next page


@dataclass(frozen=True, slots=True)
class NodeResult:
    """One node's part of a model load, unload or deploy through the proxy."""

    node: str
    status: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def _data(d: Any) -> list[dict[str, Any]]:
    return list(d["data"])


def _nodes(d: Any) -> list[NodeResult]:
    return [_from(NodeResult, r) for r in d["data"]]


def _query(**values: Any) -> dict[str, str | int | float]:
    return {k: v for k, v in values.items() if v is not None}


def list_keys() -> Call[list[ApiKey]]:
    return Call("GET", "/v1/admin/keys", lambda d: [_from(ApiKey, r) for r in d["data"]])


def create_key(name: str, scope: str, models: list[str] | None, rpm: int | None,
               tpm: int | None) -> Call[CreatedKey]:
    body = {"name": name, "scope": scope, "models": models, "rpm": rpm, "tpm": tpm}
    return Call("POST", "/v1/admin/keys", lambda d: _from(CreatedKey, d), json=body)


def revoke_key(key_id: str) -> Call[bool]:
    return Call("DELETE", f"/v1/admin/keys/{key_id}", lambda d: bool(d["revoked"]))


def usage(since: str | None, until: str | None, key_id: str | None) -> Call[list[Usage]]:
    return Call("GET", "/v1/usage", lambda d: [_from(Usage, r) for r in d["data"]],
                params=_query(since=since, until=until, key_id=key_id))


def requests(limit: int, key_id: str | None) -> Call[list[dict[str, Any]]]:
    return Call("GET", "/v1/requests", _data, params=_query(limit=limit, key_id=key_id))


def audit(actor: str | None, action: str | None, target: str | None, since: float | None,
          until: float | None, before: int | None, limit: int) -> Call[AuditPage]:
    return Call("GET", "/v1/admin/audit",
                lambda d: AuditPage(d["data"], d["has_more"], d["next_before"]),
                params=_query(actor=actor, action=action, target=target, since=since,
                              until=until, before=before, limit=limit))


def models_ps() -> Call[list[dict[str, Any]]]:
    return Call("GET", "/v1/models/ps", _data)


def models_change(verb: str, model: str, **extra: Any) -> Call[list[NodeResult]]:
    body = {"model": model, **{k: v for k, v in extra.items() if v is not None}}
    return Call("POST", f"/v1/models/{verb}", _nodes, json=body)


def list_batches(after: str | None, limit: int) -> Call[list[dict[str, Any]]]:
    return Call("GET", "/v1/batches", _data, params=_query(after=after, limit=limit))


def get_batch(batch_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/batches/{batch_id}", dict)


def cancel_batch(batch_id: str) -> Call[dict[str, Any]]:
    return Call("POST", f"/v1/batches/{batch_id}/cancel", dict)


def router_state() -> Call[dict[str, Any]]:
    return Call("GET", "/router/state", dict, ops=True)


def governator_state() -> Call[dict[str, Any]]:
    return Call("GET", "/governator/state", dict, governator=True)


def error_from(status: int, body: Any, retry_after: float | None = None) -> InfernoError:
    """The error tree's class for an error answer: by its ``code`` (and status), else the
    most general class with that status; the message and ``param`` are the server's."""
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    message = str(err.get("message") or f"HTTP {status}")
    code, param = err.get("code"), err.get("param")
    classes = _classes(InfernoError)  # parents before their children
    cls = next((c for c in classes if c.code == code and c.status_code == status), None)
    cls = cls or next((c for c in classes if c.status_code == status), InfernoError)
    return cls(message, param=param if isinstance(param, str) else None,
               retry_after=retry_after)


def _classes(root: type[InfernoError]) -> list[type[InfernoError]]:
    """The tree as core.errors draws it (not the private subclasses other modules add)."""
    out: list[type[InfernoError]] = []
    for sub in root.__subclasses__():
        if sub.__module__ == InfernoError.__module__:
            out += [sub, *_classes(sub)]
    return out

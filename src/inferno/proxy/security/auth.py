"""Authentication: ``Authorization: Bearer <API key | JWT>`` -> :class:`Principal`.

``x-api-key: <key>`` (how Anthropic clients send it) is accepted as the same credential
when no ``Authorization`` header is present.

Synchronous and in-memory (a dict lookup and one SHA-256, or a cached JWT check): the
request path never waits on the database. Error messages never echo what was presented.

Acting for another key: an admin credential with ``X-Inferno-On-Behalf-Of: <key id>``
runs the request as that key (its model permissions, limits and accounting). Batch
workers outside the proxy use it to run a batch's lines as the batch's owner. The header
is refused from any other scope.
"""

from __future__ import annotations

from collections.abc import Callable

from inferno.core.errors import AuthenticationError, PermissionDenied
from inferno.net import Request
from inferno.proxy.security.jwt_tokens import JwtVerifier
from inferno.proxy.security.keys import ANONYMOUS, KeyCache, Principal

_MAX_CREDENTIAL = 8192
ON_BEHALF_OF = "x-inferno-on-behalf-of"


class Authenticator:
    def __init__(self, keys: KeyCache, jwt: JwtVerifier | None = None, *,
                 enabled: bool = True,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.keys = keys
        self.jwt = jwt
        self.enabled = enabled
        self._on_failure = on_failure or (lambda reason: None)

    def authenticate(self, req: Request) -> Principal:
        done = req.auth
        if isinstance(done, Principal):
            return done  # already checked on the headers, before the body was read
        if not self.enabled:
            return ANONYMOUS
        value = req.header("authorization")
        if value:
            scheme, _, credential = value.strip().partition(" ")
            credential = credential.strip()
        else:
            scheme, credential = "bearer", (req.header("x-api-key") or "").strip()
            if not credential:
                self._on_failure("missing")
                raise AuthenticationError("You didn't provide an API key. Send it as "
                                          "'Authorization: Bearer <key>' or 'x-api-key: <key>'.")
        principal: Principal | None = None
        if scheme.lower() == "bearer" and 0 < len(credential) <= _MAX_CREDENTIAL:
            if credential.startswith("inf_"):
                principal = self.keys.verify(credential)
            elif self.jwt is not None and credential.count(".") == 2:
                principal = self.jwt.verify(credential)
        if principal is None:
            self._on_failure("invalid")
            raise AuthenticationError("Incorrect API key provided.")
        behalf = req.header(ON_BEHALF_OF)
        if behalf is not None:
            if not principal.is_admin:
                raise PermissionDenied(f"Only an admin credential may send {ON_BEHALF_OF}.")
            other = self.keys.principal(behalf.strip())
            if other is None:
                raise PermissionDenied(f"{ON_BEHALF_OF} names no active API key.")
            return other
        return principal


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDenied("This route needs an API key with the admin scope.")


def check_model(principal: Principal, model: str) -> None:
    if principal.models is not None and model not in principal.models:
        raise PermissionDenied(f"This API key may not use the model '{model}'.", param="model")

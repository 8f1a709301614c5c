"""JWT bearer tokens: fixed algorithms and key from config, ``exp`` required, aud/iss checked.

The key type decides the algorithm family and the two never mix: an HS* secret accepts
only HS* tokens, an RS*/ES*/PS* public key (PEM or JWKS) only those, and ``none`` is never
allowed - so neither ``alg: none`` nor algorithm confusion (an HS256 token "signed" with
the public key) can pass. Verified tokens are cached until they expire, so a client
reusing its token pays for the signature check once.

Claims map to a :class:`Principal`: ``sub`` -> key id ``jwt:<sub>``; ``scope`` (string
or list) containing ``admin`` or ``inferno:admin`` -> admin; ``models``, ``rpm``, ``tpm``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from inferno.core.errors import ConfigError
from inferno.proxy.security.keys import Principal

_HMAC = frozenset({"HS256", "HS384", "HS512"})
_ASYM = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384",
                   "PS512", "EdDSA"})
_CACHE_MAX = 10_000


class JwtVerifier:
    def __init__(self, *, secret: str | None = None, public_key_file: Path | None = None,
                 jwks_file: Path | None = None, algorithms: list[str] | None = None,
                 audience: str | None = None, issuer: str | None = None,
                 leeway: float = 10.0) -> None:
        import jwt

        self._jwt = jwt
        sources = [s for s in (secret, public_key_file, jwks_file) if s]
        if len(sources) != 1:
            raise ConfigError("JWT: configure exactly one of jwt_secret, jwt_public_key_file, "
                              "jwt_jwks_file")
        algs = list(algorithms or (["HS256"] if secret else ["RS256", "ES256"]))
        family = _HMAC if secret else _ASYM
        bad = [a for a in algs if a not in family]
        if bad:
            kind = "an HS* secret" if secret else "a public key"
            raise ConfigError(f"JWT: algorithm(s) {', '.join(bad)} cannot be used with {kind} "
                              "(never 'none'; HS* only with a secret, RS*/ES* only with a key)")
        self._algorithms = algs
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._key: Any = None
        self._jwks: Any = None
        try:
            if secret:
                self._key = secret
            elif public_key_file:
                self._key = public_key_file.read_text()
            elif jwks_file:
                self._jwks = jwt.PyJWKSet.from_json(jwks_file.read_text())
        except (OSError, jwt.PyJWTError) as exc:
            raise ConfigError(f"JWT: cannot load the verification key: {exc}") from exc
        self._cache: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal | None:
        hit = self._cache.get(token)
        now = time.time()
        if hit is not None:
            if hit[1] + self._leeway > now:
                return hit[0]
            del self._cache[token]
        jwt = self._jwt
        try:
            key = self._key
            if self._jwks is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                key = next((k.key for k in self._jwks.keys if k.key_id == kid or kid is None),
                           None)
                if key is None:
                    return None
            claims = jwt.decode(
                token, key, algorithms=self._algorithms, audience=self._audience,
                issuer=self._issuer, leeway=self._leeway,
                options={"require": ["exp", *(["aud"] if self._audience else []),
                                     *(["iss"] if self._issuer else [])]})
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        principal = _principal(claims)
        if principal is None:
            return None
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (principal, float(claims["exp"]))
        return principal


def _principal(claims: dict[str, Any]) -> Principal | None:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 56:
        return None
    scope = claims.get("scope", "")
    scopes = set(scope.split() if isinstance(scope, str) else
                 [s for s in scope if isinstance(s, str)] if isinstance(scope, list) else [])
    models = claims.get("models")
    return Principal(
        key_id=f"jwt:{sub}",
        scope="admin" if scopes & {"admin", "inferno:admin"} else "user",
        models=frozenset(m for m in models if isinstance(m, str))
        if isinstance(models, list) else None,
        rpm=_int(claims.get("rpm")), tpm=_int(claims.get("tpm")))


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

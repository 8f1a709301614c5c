"""Dashboard sign-in: who is looking, from an API key (Bearer) or a session cookie.

A browser signs in once with an admin key on the login form; the dashboard then keeps a
random session token (never the key) in a ``Secure; HttpOnly; SameSite=Strict`` cookie,
scoped to ``/ui``. Sessions live in memory: restarting the proxy signs everyone out.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from inferno.api.dashboard import DataSource, Viewer
from inferno.net import Request

COOKIE = "inferno_ui"
_MAX_SESSIONS = 10_000


class Sessions:
    def __init__(self, source: DataSource, *, ttl: float = 12 * 3600,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._ttl = ttl
        self._clock = clock
        self._live: dict[str, tuple[Viewer, float]] = {}

    def viewer(self, req: Request) -> Viewer | None:
        """The signed-in viewer, or None. With auth off, everyone is an admin (as on the API)."""
        if not self._source.auth_enabled:
            return Viewer(None, True)
        auth = req.header("authorization")
        if auth:
            scheme, _, credential = auth.strip().partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                return None
            return self._source.verify(credential.strip())
        token = cookie(req, COOKIE)
        if not token:
            return None
        entry = self._live.get(token)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._live[token]
            return None
        return entry[0]

    def start(self, viewer: Viewer) -> str:
        """A new session for ``viewer``; the value of its Set-Cookie header."""
        now = self._clock()
        if len(self._live) >= _MAX_SESSIONS:
            self._live = {t: e for t, e in self._live.items() if e[1] > now}
            while len(self._live) >= _MAX_SESSIONS:
                del self._live[next(iter(self._live))]
        token = secrets.token_urlsafe(32)
        self._live[token] = (viewer, now + self._ttl)
        return (f"{COOKIE}={token}; Path=/ui; Max-Age={int(self._ttl)}; Secure; HttpOnly; "
                "SameSite=Strict")

    def end(self, req: Request) -> str:
        token = cookie(req, COOKIE)
        if token:
            self._live.pop(token, None)
        return f"{COOKIE}=; Path=/ui; Max-Age=0; Secure; HttpOnly; SameSite=Strict"


def cookie(req: Request, name: str) -> str | None:
    raw = req.header("cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None

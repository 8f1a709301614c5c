"""One response face (:class:`_Resp`) over the two clients a download uses: ``http://``
through the project's own client (``inferno.net.client``, asyncio.Protocol + httptools, ~5x
httpx2's receive rate on loopback), ``https://`` (and a redirect to it) through httpx2,
imported here only, when such a download starts. Every rule of the download holds for
both."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from inferno.core.errors import ModelSourceError, UpstreamError
from inferno.models._fetch_options import FetchOptions

if TYPE_CHECKING:
    import httpx2

    from inferno.net.client import HttpClient, UpstreamResponse


class _Resp:
    """One answer, whichever client fetched it: status, headers, body chunks, close."""

    __slots__ = ("_httpx", "_it", "_own", "_stall", "status")

    def __init__(
        self,
        *,
        own: UpstreamResponse | None = None,
        httpx: httpx2.Response | None = None,
        stall: float = 30.0,
    ) -> None:
        self._own, self._httpx, self._stall = own, httpx, stall
        self._it = httpx.aiter_raw() if httpx is not None else None
        self.status = own.status if own is not None else httpx.status_code if httpx else 0

    def header(self, name: str) -> str | None:
        if self._own is not None:
            return self._own.header(name)
        assert self._httpx is not None
        return self._httpx.headers.get(name)

    async def next(self) -> bytes | None:
        """The next body bytes (as they arrived); None at the end of the body."""
        if self._own is not None:
            return await self._own.next_chunk(self._stall)
        assert self._it is not None
        return await anext(self._it, None)

    async def aclose(self) -> None:
        if self._own is not None:
            self._own.close()  # an unfinished body closes the socket
        elif self._httpx is not None:
            await self._httpx.aclose()


class _Clients:
    """``http://`` through the project's own client, anything else through httpx2."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self.own: HttpClient | None = None
        self.httpx: httpx2.AsyncClient | None = None

    async def get(self, url: str, headers: dict[str, str]) -> _Resp:
        o = self.options
        u = urlsplit(url)
        if o.own_http and u.scheme == "http" and u.hostname:
            if self.own is None:
                from inferno.net.client import HttpClient

                self.own = HttpClient(max_idle_per_host=o.parts + 1)
            target = (u.path or "/") + (f"?{u.query}" if u.query else "")
            own = await self.own.request(
                u.hostname,
                u.port or 80,
                "GET",
                target,
                headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
                connect_timeout=o.connect_timeout,
                header_timeout=o.stall_timeout,
            )
            return _Resp(own=own, stall=o.stall_timeout)
        if self.httpx is None:
            try:
                import httpx2
            except ImportError as exc:  # a core dependency; only a broken install lacks it
                raise ModelSourceError("downloads need httpx2: pip install httpx2") from exc
            self.httpx = httpx2.AsyncClient(
                timeout=httpx2.Timeout(o.stall_timeout, connect=o.connect_timeout),
                follow_redirects=False,
                limits=httpx2.Limits(
                    max_connections=o.parts + 1, max_keepalive_connections=o.parts
                ),
            )
        client = self.httpx
        resp = await client.send(client.build_request("GET", url, headers=headers), stream=True)
        return _Resp(httpx=resp)

    async def aclose(self) -> None:
        if self.own is not None:
            await self.own.aclose()
        if self.httpx is not None:
            await self.httpx.aclose()


def _transport_errors() -> tuple[type[Exception], ...]:
    """What a broken connection raises, from either client: retried, then resumed."""
    try:
        import httpx2
    except ImportError:
        return (UpstreamError,)
    return (UpstreamError, httpx2.TransportError)


def tls_refusal(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check a connection failed, if that is why it failed: no retry fixes
    it (only trusting the server's CA, e.g. with ``SSL_CERT_FILE``)."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx2 wraps the ssl error once or twice
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None

"""What the ``hf://`` and ``ollama://`` sources share: the HTTP client and its errors.

Registries are remote TLS hosts, so resolution goes through ``httpx2`` (the ``remote``
extra), imported here only when a source first resolves. Transport failures become
``ModelSourceError`` at this one boundary; the messages name the reference and the host,
never a request header (that is where tokens travel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inferno.core.errors import ModelSourceError

if TYPE_CHECKING:
    import httpx2

TIMEOUT = 30.0  # seconds per request: registries answer metadata quickly or not at all


def client(ref: str, timeout: float = TIMEOUT) -> httpx2.AsyncClient:
    try:
        import httpx2
    except ImportError as exc:
        raise ModelSourceError(
            f"{ref}: resolving needs httpx2: pip install -e '.[remote]'"
        ) from exc
    # Redirects are followed per call: a resolve HEAD must see Hugging Face's CDN redirect.
    return httpx2.AsyncClient(timeout=httpx2.Timeout(timeout), follow_redirects=False)


async def send(
    http: httpx2.AsyncClient, ref: str, method: str, url: str, **kwargs: Any
) -> httpx2.Response:
    """One request; a transport failure becomes ``ModelSourceError`` naming ``ref``."""
    import httpx2

    try:
        return await http.request(method, url, **kwargs)
    except httpx2.TimeoutException as exc:
        raise ModelSourceError(f"{ref}: {_host(url)} did not answer in time") from exc
    except httpx2.HTTPError as exc:
        raise ModelSourceError(f"{ref}: cannot reach {_host(url)} ({type(exc).__name__})") from exc


def retry_after(resp: httpx2.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (the delta-seconds form registries send)."""
    value = resp.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def answer(resp: httpx2.Response, limit: int = 200) -> str:
    """The registry's answer for a message: status and the start of its body."""
    text = resp.text.strip().replace("\n", " ")
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"HTTP {resp.status_code}" + (f": {text}" if text else "")


def _host(url: str) -> str:
    # scheme://host[:port]/... -> host[:port]; never the path or query
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit("@", 1)[-1]

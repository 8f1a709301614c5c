from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import pytest
import pytest_asyncio

from inferno.backend.engines.fake import FakeEngine
from inferno.backend.node import BackendNode
from inferno.core.config import BackendSettings, ProxySettings
from inferno.proxy.gateway import Gateway

# Proxies started by tests (in-process or as processes) keep their SQLite database and
# cache in a directory of this test session, never in the user's ~/.local/share/inferno.
os.environ.setdefault("INFERNO_PROXY_DATA_DIR", tempfile.mkdtemp(prefix="inferno-tests-"))
# The governator (inferno serve runs one) shares that directory, as it does by default.
os.environ.setdefault("INFERNO_GOVERNATOR_DATA_DIR", os.environ["INFERNO_PROXY_DATA_DIR"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_fake_node(
    *,
    model: str = "fake-model",
    token_delay: float = 0.0,
    parallel: int = 4,
    n_ctx: int = 256,
    eos_after: int | None = None,
    discovery_lb: str | None = None,
    node_id: str | None = None,
    lease: float = 5.0,
) -> BackendNode:
    settings = BackendSettings(
        port=0,
        ops_port=0,
        engine="fake",
        served_name=model,
        parallel=parallel,
        n_ctx=n_ctx,
        discovery_lb=discovery_lb,
        node_id=node_id,
        heartbeat_interval=0.2,
        lease_seconds=lease,
        drain_timeout=5.0,
    )
    engine = FakeEngine(
        model_id=model, n_ctx=n_ctx, parallel=parallel, token_delay=token_delay, eos_after=eos_after
    )
    node = BackendNode(settings, engine)
    await node.start()
    return node


@pytest_asyncio.fixture
async def fake_node() -> AsyncIterator[BackendNode]:
    node = await start_fake_node()
    yield node
    await node.drain()


async def start_plain_gateway(**overrides: Any) -> Gateway:
    """A proxy on free loopback ports with short timeouts and the process's defaults
    otherwise (its data directory is this test session's)."""
    settings: dict[str, Any] = {
        "port": 0, "ops_port": 0, "connect_timeout": 0.5, "response_timeout": 10,
        "stream_idle_timeout": 2, "drain_timeout": 2, "default_lease": 1.0}
    gw = Gateway(ProxySettings(**{**settings, **overrides}))
    await gw.start()
    return gw


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = await start_plain_gateway()
    yield gw
    await gw.drain()


async def start_gateway(data_dir: Path, **overrides: Any) -> Gateway:
    """A proxy on free loopback ports with its own data directory (database, cache)."""
    settings: dict[str, Any] = {
        "port": 0,
        "ops_port": 0,
        "connect_timeout": 0.5,
        "response_timeout": 10,
        "stream_idle_timeout": 2,
        "drain_timeout": 2,
        "default_lease": 1.0,
        "data_dir": data_dir,
        "keys_refresh_interval": 0.2,
        "log_flush_interval": 0.05,
    }
    gw = Gateway(ProxySettings(**{**settings, **overrides}))
    await gw.start()
    return gw


# Where the services are looked for. INFERNO_TEST_POSTGRES_URL / INFERNO_TEST_REDIS_URL point
# the probes elsewhere (one URL each), e.g. at a dead port to check that CI=true fails.
POSTGRES_URLS = tuple(
    [os.environ["INFERNO_TEST_POSTGRES_URL"]]
    if os.environ.get("INFERNO_TEST_POSTGRES_URL")
    else [
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        "postgresql+asyncpg://root@127.0.0.1:5432/test",
    ]
)
REDIS_URL = os.environ.get("INFERNO_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"


def postgres_url() -> str | None:
    """A PostgreSQL URL that answers (trust auth on 127.0.0.1:5432), or None."""
    import asyncio

    async def probe(url: str) -> bool:
        import asyncpg

        try:
            conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    global _PG_URL
    if _PG_URL is None:
        # In a thread of its own: callers may be inside a running event loop (a fixture).
        with ThreadPoolExecutor(1) as pool:
            _PG_URL = next(
                (u for u in POSTGRES_URLS if pool.submit(asyncio.run, probe(u)).result()), ""
            )
    return _PG_URL or None


_PG_URL: str | None = None


def redis_url() -> str | None:
    """The local Redis (127.0.0.1:6379) if it answers PING, else None."""
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1
        ) as s:
            s.sendall(b"PING\r\n")
            return REDIS_URL if s.recv(16).startswith(b"+PONG") else None
    except OSError:
        return None


def _missing(reason: str) -> NoReturn:
    """Skip a test whose service is not there; under CI (CI=true) that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{reason}, and CI=true: the service is required wherever this project is tested",
            pytrace=False,
        )
    pytest.skip(reason)


def require_postgres() -> str:
    """The PostgreSQL URL for a test that needs it: skip without one, fail under CI=true.

    The one place that decides; every PostgreSQL test goes through it (or ``postgres``).
    """
    url = postgres_url()
    if url is None:
        _missing(f"no PostgreSQL server answers at {' or '.join(POSTGRES_URLS)}")
    return url


def require_redis() -> str:
    """The Redis URL for a test that needs it: skip without one, fail under CI=true."""
    url = redis_url()
    if url is None:
        _missing(f"no Redis answers PING at {REDIS_URL}")
    return url


@pytest.fixture
def postgres() -> str:
    """The URL of the test PostgreSQL (see :func:`require_postgres`)."""
    return require_postgres()


@pytest.fixture
def redis() -> str:
    """The URL of the test Redis (see :func:`require_redis`)."""
    return require_redis()


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[Any]:
    """A fake Hugging Face hub on 127.0.0.1 (tests/fakes/hf_hub.py)."""
    from tests.fakes.hf_hub import FakeHub

    fake = FakeHub()
    await fake.start()
    yield fake
    await fake.close()


@pytest_asyncio.fixture
async def registry() -> AsyncIterator[Any]:
    """A fake OCI / Ollama registry on 127.0.0.1 (tests/fakes/oci_registry.py)."""
    from tests.fakes.oci_registry import FakeRegistry

    fake = FakeRegistry()
    await fake.start()
    yield fake
    await fake.close()

"""Downloads against a fake file server on loopback: resume, integrity, retries, redirects."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from inferno.core.errors import ModelIntegrityError
from inferno.models.download import FetchOptions, fetch
from inferno.models.remote import Remote
from inferno.models.store import ModelStore, hash_file
from tests.fakes.file_server import FileServer
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.polling import eventually

# http:// through inferno.net.client (the default) and through httpx2 (as https:// goes)
BOTH_CLIENTS = pytest.mark.parametrize("own_http", [True, False], ids=["own", "httpx2"])
FAST = FetchOptions(backoff=0.01, max_backoff=0.05, stall_timeout=0.5, connect_timeout=2)


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[FileServer]:
    srv = await FileServer().start()
    srv.files["/m/tiny.gguf"] = write_tiny_gguf(tmp_path / "src.gguf")
    yield srv
    await srv.stop()


def remote(srv: FileServer, *, digest: bool = True, **kw: object) -> Remote:
    body = srv.files["/m/tiny.gguf"]
    sha = hashlib.sha256(body).hexdigest() if digest else None
    return Remote(
        url=srv.url + "/m/tiny.gguf",
        filename="tiny.gguf",
        size=len(body) if digest else None,
        sha256=sha,
        **kw,
    )  # type: ignore[arg-type]


@BOTH_CLIENTS
async def test_a_cut_download_resumes_at_the_right_byte(
    server: FileServer, tmp_path: Path, own_http: bool
) -> None:
    body = server.files["/m/tiny.gguf"]
    half = len(body) // 2
    server.faults.cut_at = half
    store = ModelStore(tmp_path / "store")
    layer = await fetch(remote(server), store, options=replace(FAST, own_http=own_http))
    assert [r.range_start for r in server.requests] == [None, half]
    assert server.requests[1].headers["if-range"] == server.etag
    assert server.bytes_sent == len(body)
    assert hash_file(store.blob_path(layer.digest)) == (hashlib.sha256(body).hexdigest(), len(body))
    assert not list(store.blobs.glob("*.partial*"))


@BOTH_CLIENTS
async def test_a_flipped_byte_is_quarantined_and_named(
    server: FileServer, tmp_path: Path, own_http: bool
) -> None:
    server.faults.flip_at = 1000
    store = ModelStore(tmp_path / "store")
    r = remote(server, headers={"Authorization": "Bearer s3cret"})
    with pytest.raises(ModelIntegrityError) as info:
        await fetch(r, store, options=replace(FAST, own_http=own_http))
    bad = bytearray(server.files["/m/tiny.gguf"])
    bad[1000] ^= 0xFF
    received = hashlib.sha256(bad).hexdigest()
    msg = info.value.message
    assert r.sha256 is not None and r.sha256 in msg and received in msg
    assert f"127.0.0.1:{server.port}/m/tiny.gguf" in msg and "s3cret" not in msg
    assert not store.has_blob(r.sha256)
    assert [p.read_bytes() for p in store.quarantine.iterdir()] == [bytes(bad)]


async def test_retry_after_is_honoured_then_the_file_arrives(
    server: FileServer, tmp_path: Path
) -> None:
    server.faults.errors = [(429, 0.05), (503, 0.05)]
    layer = await fetch(remote(server), ModelStore(tmp_path / "s"), options=FAST)
    assert [r.status for r in server.requests] == [429, 503, 200]
    assert layer.size == len(server.files["/m/tiny.gguf"])


@BOTH_CLIENTS
async def test_a_stall_reconnects_and_resumes(
    server: FileServer, tmp_path: Path, own_http: bool
) -> None:
    server.faults.stall_at = 5000
    server.faults.stall_for = 5
    await fetch(
        remote(server), ModelStore(tmp_path / "s"), options=replace(FAST, own_http=own_http)
    )
    assert [r.range_start for r in server.requests] == [None, 5000]


async def test_a_server_ignoring_range_restarts_from_zero(
    server: FileServer, tmp_path: Path
) -> None:
    server.faults.cut_at = 3000
    server.faults.ignore_range = True
    store = ModelStore(tmp_path / "s")
    layer = await fetch(remote(server), store, options=FAST)
    assert [r.status for r in server.requests] == [200, 200]
    assert server.requests[1].headers.get("range") == "bytes=3000-"
    assert hash_file(store.blob_path(layer.digest))[0] == layer.digest


async def test_a_changed_etag_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    server.faults.cut_at = 3000
    store = ModelStore(tmp_path / "s")

    async def change_etag_after_first() -> None:
        await eventually(lambda: server.requests, what="the first request")
        server.etag = '"v2"'

    await asyncio.gather(
        fetch(remote(server, digest=False), store, options=FAST), change_etag_after_first()
    )
    assert server.requests[1].headers["if-range"] == '"v1"'
    assert [r.status for r in server.requests] == [200, 200]
    assert len(store.list()) == 0 and len(list(store.blobs.glob("sha256-*"))) == 1


async def test_authorization_stays_with_its_host(server: FileServer, tmp_path: Path) -> None:
    cdn = await FileServer("127.0.0.2").start()
    try:
        cdn.files = server.files
        server.faults.redirect_to = cdn.url
        await fetch(
            remote(server, headers={"Authorization": "Bearer s3cret"}),
            ModelStore(tmp_path / "s"),
            options=FAST,
        )
        assert server.requests[0].headers["authorization"] == "Bearer s3cret"
        assert server.requests[0].status == 302
        assert cdn.requests and all("authorization" not in r.headers for r in cdn.requests)
    finally:
        await cdn.stop()


async def test_two_concurrent_pulls_download_once(server: FileServer, tmp_path: Path) -> None:
    server.faults.delay = 0.005
    store_root = tmp_path / "s"
    layers = await asyncio.gather(
        fetch(remote(server), ModelStore(store_root), options=FAST),
        fetch(remote(server), ModelStore(store_root), options=FAST),
    )
    assert layers[0] == layers[1]
    assert len(server.requests) == 1
    assert server.bytes_sent == len(server.files["/m/tiny.gguf"])


CHILD = """
import asyncio, sys
from pathlib import Path
from inferno.models.download import fetch
from inferno.models.remote import Remote
from inferno.models.store import ModelStore
asyncio.run(fetch(Remote(url=sys.argv[1], filename="tiny.gguf", size=int(sys.argv[3]),
                         sha256=sys.argv[4]), ModelStore(Path(sys.argv[2]))))
"""


async def test_sigkill_mid_download_then_a_new_pull_resumes(tmp_path: Path) -> None:
    srv = await FileServer().start()
    try:
        body = write_tiny_gguf(tmp_path / "big.gguf", n_floats=1024 * 1024)  # 4 MiB
        srv.files["/big.gguf"] = body
        srv.faults.chunk, srv.faults.delay = 16 * 1024, 0.01
        digest = hashlib.sha256(body).hexdigest()
        store = ModelStore(tmp_path / "s")
        partial = store.blobs / f"sha256-{digest}.partial"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            srv.url + "/big.gguf",
            str(store.root),
            str(len(body)),
            digest,
            env=env,
        )
        try:
            await eventually(
                lambda: partial.exists() and partial.stat().st_size > 1 << 20,
                timeout=30,
                what="a quarter of the file on disk",
            )
        finally:
            child.send_signal(signal.SIGKILL)
            await asyncio.wait_for(child.wait(), 10)
        first = srv.bytes_sent
        assert first < len(body)
        srv.faults.delay = 0
        layer = await fetch(
            Remote(url=srv.url + "/big.gguf", filename="big.gguf", size=len(body), sha256=digest),
            store,
            options=FAST,
        )
        resumed = srv.requests[-1]
        assert resumed.range_start is not None and resumed.range_start > 1 << 20
        assert resumed.sent < len(body)
        assert hash_file(store.blob_path(layer.digest)) == (digest, len(body))
    finally:
        await srv.stop()

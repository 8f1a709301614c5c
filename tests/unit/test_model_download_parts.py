"""Large files come in ranged parts at once; each part resumes on its own (threshold lowered)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from inferno.core.errors import ModelIntegrityError, ModelSourceError
from inferno.models.download import FetchOptions, fetch
from inferno.models.remote import Remote
from inferno.models.store import ModelStore, hash_file
from tests.fakes.file_server import FileServer
from tests.fakes.tiny_gguf import write_tiny_gguf

# http:// through inferno.net.client (the default) and through httpx2 (as https:// goes)
BOTH_CLIENTS = pytest.mark.parametrize("own_http", [True, False], ids=["own", "httpx2"])
PARTS = FetchOptions(
    backoff=0.01,
    max_backoff=0.05,
    stall_timeout=0.5,
    connect_timeout=2,
    parallel_min_size=64 * 1024,
    checkpoint=8 * 1024,
)
PATH = "/m/big.gguf"


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[FileServer]:
    srv = await FileServer().start()
    srv.files[PATH] = write_tiny_gguf(tmp_path / "src.gguf", n_floats=100_000)  # ~400 KB
    srv.faults.chunk = 4096
    yield srv
    await srv.stop()


def body(srv: FileServer) -> bytes:
    return srv.files[PATH]


def part_size(srv: FileServer) -> int:
    return -(-len(body(srv)) // 4)


def remote(srv: FileServer, *, digest: bool = True) -> Remote:
    data = body(srv)
    return Remote(
        url=srv.url + PATH,
        filename="big.gguf",
        size=len(data) if digest else None,
        sha256=hashlib.sha256(data).hexdigest() if digest else None,
    )


def ranges(srv: FileServer) -> list[tuple[int | None, int | None]]:
    return sorted((r.range_start, r.range_end) for r in srv.requests if r.status == 206)


def assert_blob(store: ModelStore, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    assert hash_file(store.blob_path(digest)) == (digest, len(data))
    assert not list(store.blobs.glob("*.partial*"))


async def test_four_ranged_parts_cover_the_file(server: FileServer, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s")
    await fetch(remote(server), store, options=PARTS)
    n, step = len(body(server)), part_size(server)
    assert ranges(server) == [(i * step, min(n, (i + 1) * step) - 1) for i in range(4)]
    assert server.bytes_sent == n
    assert_blob(store, body(server))


@BOTH_CLIENTS
async def test_a_cut_part_resumes_alone(server: FileServer, tmp_path: Path, own_http: bool) -> None:
    step = part_size(server)
    cut = 2 * step + step // 2  # in the middle of the third part
    server.faults.cut_at = cut
    store = ModelStore(tmp_path / "s")
    await fetch(remote(server), store, options=replace(PARTS, own_http=own_http))
    assert len(server.requests) == 5
    assert server.requests[-1].range_start == cut
    assert server.bytes_sent - len(body(server)) <= step
    assert_blob(store, body(server))


async def test_a_new_pull_resumes_each_part_from_the_sidecar(
    server: FileServer, tmp_path: Path
) -> None:
    step = part_size(server)
    server.faults.cut_at = step + 5000
    server.faults.cuts = 99
    store = ModelStore(tmp_path / "s")
    give_up = replace(PARTS, max_attempts=1)
    with pytest.raises(ModelSourceError):
        await fetch(remote(server), store, options=give_up)
    (sidecar,) = store.blobs.glob("*.partial.json")
    parts = orjson.loads(sidecar.read_bytes())["parts"]
    assert [p[0] for p in parts] == [0, step, 2 * step, 3 * step]
    first = server.bytes_sent
    server.faults.cut_at = None
    await fetch(remote(server), store, options=PARTS)
    resent = server.bytes_sent - first
    assert resent == len(body(server)) - sum(p[2] for p in parts)
    assert first + resent - len(body(server)) <= step
    assert_blob(store, body(server))


@BOTH_CLIENTS
async def test_a_stalled_part_reconnects(
    server: FileServer, tmp_path: Path, own_http: bool
) -> None:
    server.faults.stall_at = part_size(server) + 4096
    server.faults.stall_for = 5
    store = ModelStore(tmp_path / "s")
    await fetch(remote(server), store, options=replace(PARTS, own_http=own_http))
    assert server.requests[-1].range_start == part_size(server) + 4096
    assert_blob(store, body(server))


async def test_an_unknown_size_switches_to_parts(server: FileServer, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s")
    layer = await fetch(remote(server, digest=False), store, options=PARTS)
    assert [r.status for r in server.requests] == [200, 206, 206, 206, 206]
    assert len(ranges(server)) == 4
    assert layer.size == len(body(server))
    assert_blob(store, body(server))


async def test_a_flipped_byte_in_a_part_is_quarantined(server: FileServer, tmp_path: Path) -> None:
    server.faults.flip_at = 3 * part_size(server) + 10
    store = ModelStore(tmp_path / "s")
    with pytest.raises(ModelIntegrityError):
        await fetch(remote(server), store, options=PARTS)
    assert not list(store.blobs.glob("sha256-*[!k]"))  # only the .lock file is left
    assert len(list(store.quarantine.iterdir())) == 1


async def test_no_range_support_falls_back_to_one_stream(
    server: FileServer, tmp_path: Path
) -> None:
    server.faults.ignore_range = True
    store = ModelStore(tmp_path / "s")
    await fetch(remote(server), store, options=PARTS)
    assert server.requests[-1].range_start is None and server.requests[-1].status == 200
    assert_blob(store, body(server))

"""``inferno models ...`` end to end through the CLI, against the fake file server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferno.cli import app
from inferno.models.store import ModelStore
from tests.fakes.file_server import FileServer
from tests.fakes.tiny_gguf import write_tiny_gguf


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FileServer]:
    """The fake server on a loop of its own thread: the CLI runs asyncio.run itself."""
    import asyncio

    loop = asyncio.new_event_loop()
    srv = FileServer()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(srv.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    srv.files["/m/tiny.gguf"] = write_tiny_gguf(tmp_path / "src.gguf")
    yield srv
    asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["models", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_pull_json_progress_then_list_and_show(server: FileServer, tmp_path: Path) -> None:
    server.faults.chunk = 4096
    store = str(tmp_path / "store")
    code, out = cli("pull", server.url + "/m/tiny.gguf", "--json", "--models-dir", store)
    assert code == 0, out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "progress" and lines[-1]["event"] == "done"
    size = len(server.files["/m/tiny.gguf"])
    assert any(x.get("done") == size and x.get("total") == size for x in lines)
    name = f"127.0.0.1-{server.port}/m/tiny"
    assert lines[-1]["name"] == name and lines[-1]["format"] == "gguf"

    code, out = cli("list", "--models-dir", store)
    assert code == 0 and name in out and "gguf" in out and "smollm2-135m" in out

    code, out = cli(
        "show", name, "--json", "--ctx", "1024", "--parallel", "2", "--models-dir", store
    )
    assert code == 0, out
    shown = json.loads(out)
    g = shown["gguf"]
    assert (g["architecture"], g["context_length"], g["n_layer"], g["n_embd"]) == (
        "llama",
        2048,
        4,
        256,
    )
    assert g["chat_template"] is True and g["parameters"] == 64 * 1024
    assert g["file_type"] == "ALL_F32"
    # KV: 4 layers * (1024 * 2) ctx * (32 * 2 + 32 * 2) * 2 bytes (head dim 256 / 8 = 32)
    assert shown["memory"]["kv_cache"] == 4 * 2048 * 128 * 2


def test_rm_refused_while_a_process_has_the_blob_open(tmp_path: Path) -> None:
    src = tmp_path / "a.gguf"
    write_tiny_gguf(src)
    store = tmp_path / "store"
    code, out = cli("import", str(src), "tiny:v1", "--models-dir", str(store))
    assert code == 0, out
    blob = ModelStore(store).blob_path(ModelStore(store).get_manifest("tiny:v1").layers[0].digest)
    with blob.open("rb"):  # this process "serves" it
        code, out = cli("rm", "tiny:v1", "--models-dir", str(store))
        assert code == 2 and "in use" in out
    code, out = cli("rm", "tiny:v1", "--models-dir", str(store))
    assert code == 0 and ModelStore(store).list() == []


def test_verify_exits_1_on_a_corrupted_blob(tmp_path: Path) -> None:
    src = tmp_path / "a.gguf"
    write_tiny_gguf(src)
    store = tmp_path / "store"
    assert cli("import", str(src), "tiny", "--models-dir", str(store))[0] == 0
    assert cli("verify", "--models-dir", str(store)) == (0, "all blobs verified\n")
    with src.open("r+b") as f:  # same inode as the blob
        f.seek(64)
        f.write(b"\x00\x01\x02")
    code, out = cli("verify", "--models-dir", str(store))
    assert code == 1 and "quarantined" in out

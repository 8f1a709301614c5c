"""Workers: two runners never hold one item at once (leases renewed while items run);
``inferno batch worker`` processes dispatch through the proxy on behalf of the owner;
schedules run once per due time; batch progress on /metrics."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx
import pytest

from inferno.batch.runner import Runner, RunnerConfig
from inferno.batch.supervisor import next_run
from inferno.batch.types import Answer
from inferno.batch.worker import BatchWorker
from inferno.core.config import BatchSettings
from inferno.proxy.security.keys import create_key
from tests.batch_support import (
    completion,
    jsonl,
    parse_lines,
    start_batch_gateway,
    start_node,
    until_served,
)
from tests.polling import eventually
from tests.unit.test_store import BACKENDS, open_store


@pytest.mark.parametrize("kind", BACKENDS)
async def test_two_runners_never_hold_the_same_item(tmp_path: Path, kind: str) -> None:
    store = await open_store(kind, tmp_path)
    n = 60
    await store.batches.create({
        "id": "batch_x", "owner": None, "endpoint": "/v1/completions",
        "input_file_id": "f", "completion_window": "24h", "status": "in_progress",
        "created_at": 0.0, "expires_at": time.time() + 3600, "total": n, "completed": 0,
        "failed": 0, "prompt_tokens": 0, "completion_tokens": 0})
    await store.batch_items.insert_many([("batch_x", i, f"c{i}", i, 1) for i in range(n)])
    await store.batch_items.activate("batch_x")

    async def read_line(file_id: str, offset: int, length: int) -> bytes:
        return b'{"body": {"i": %d}}' % offset
    holding: set[bytes] = set()
    overlaps: list[bytes] = []
    calls: Counter[bytes] = Counter()

    async def dispatch(owner: str | None, path: str, body: bytes) -> Answer:
        if body in holding:
            overlaps.append(body)
        holding.add(body)
        calls[body] += 1
        await asyncio.sleep(0.8)  # longer than the lease: only renewals keep it
        holding.discard(body)
        return Answer(200, b'{"usage":{"prompt_tokens":1,"completion_tokens":2}}')

    cfg = RunnerConfig(concurrency=8, lease=0.5, poll_interval=0.02)
    runners = [Runner(store, dispatch, read_line, cfg) for _ in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        async def all_done() -> bool:
            return (await store.batch_items.counts("batch_x")).get("done") == n
        await eventually(all_done, timeout=30, what="every item done")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.drop_schema()
        await store.close()
    assert all(r.done > 0 for r in runners), "both runners took part"
    assert sum(r.done for r in runners) == n
    assert overlaps == []
    # A renewed lease is never taken over: each item ran once.
    assert set(calls.values()) == {1} and len(calls) == n


async def test_worker_process_acts_for_the_owner(tmp_path: Path) -> None:
    gw = await start_batch_gateway(tmp_path, batch={"workers": 0})  # no in-proxy workers
    node, engine = await start_node(gw.ops.port)
    store = gw.security.store
    assert store is not None
    worker: BatchWorker | None = None
    try:
        await until_served(gw)
        alice, alice_row = await create_key(store, name="alice")
        admin, _ = await create_key(store, name="ops", scope="admin")
        await gw.security.keys.refresh()
        gw.security.auth.enabled = True
        base = f"http://127.0.0.1:{gw.server.port}/v1"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            # Only an admin credential may act on behalf of another key.
            r = await http.post("/completions", json={"model": "fake-model", "prompt": "x"},
                                headers={"authorization": f"Bearer {alice}",
                                         "x-inferno-on-behalf-of": alice_row.id})
            assert r.status_code == 403
            auth = {"authorization": f"Bearer {alice}"}
            lines = [completion(f"w{i}", f"p {i}") for i in range(6)]
            f = await http.post("/files", data={"purpose": "batch"}, headers=auth,
                                files={"file": ("in.jsonl", jsonl(lines))})
            b = await http.post("/batches", headers=auth, json={
                "input_file_id": f.json()["id"], "endpoint": "/v1/completions",
                "completion_window": "24h"})
            batch_id = b.json()["id"]

            async def status() -> str:
                return str((await http.get(f"/batches/{batch_id}", headers=auth)).json()["status"])
            await eventually(lambda: _is(status, "in_progress"), timeout=10,
                             what="validation")
            assert engine.calls.total() == 0  # nothing runs without a worker
            worker = BatchWorker(BatchSettings(
                proxy_url=f"http://127.0.0.1:{gw.server.port}", api_key=admin,
                database_url=str(store.url), poll_interval=0.05, workers=4))
            await worker.start()
            await eventually(lambda: _is(status, "completed"), timeout=20, what="completion")
            final = (await http.get(f"/batches/{batch_id}", headers=auth)).json()
            out = await http.get(f"/files/{final['output_file_id']}/content", headers=auth)
            assert sorted(o["custom_id"] for o in parse_lines(out.content)) == sorted(
                f"w{i}" for i in range(6))
        # Accounted to alice, not to the worker's admin key.
        await gw.security.log.flush()
        rows = await store.requests.recent(limit=50)
        runs = [r for r in rows if r["route"] == "/v1/completions" and r["status"] == 200]
        assert len(runs) == 6 and {r["key_id"] for r in runs} == {alice_row.id}
    finally:
        if worker is not None:
            await worker.drain()
        await node.drain()
        await gw.drain()


async def _is(status: object, want: str) -> bool:
    return await status() == want  # type: ignore[operator, no-any-return]


@pytest.mark.parametrize("missed", ["once", "skip"])
async def test_missed_schedule_runs_once_at_start_or_is_skipped(tmp_path: Path,
                                                                 missed: str) -> None:
    gw = await start_batch_gateway(tmp_path, batch={"missed_runs": missed, "workers": 0})
    store = gw.security.store
    assert store is not None
    try:
        base = f"http://127.0.0.1:{gw.server.port}/v1"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            f = await http.post("/files", data={"purpose": "batch"},
                                files={"file": ("in.jsonl", jsonl([completion("a", "x")]))})
            s = await http.post("/batches/schedules", json={
                "cron": "0 2 * * *", "input_file_id": f.json()["id"],
                "endpoint": "/v1/completions"})
            assert s.status_code == 200, s.text
            sched = s.json()
            assert sched["next_run_at"] == int(next_run("0 2 * * *", time.time()))
            bad = await http.post("/batches/schedules", json={
                "cron": "every day", "input_file_id": f.json()["id"],
                "endpoint": "/v1/completions"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "cron"
        await gw.drain()
        # Down for three days: three runs were missed.
        await store.schedules.update(sched["id"], next_run_at=time.time() - 3 * 86400)
        store_url = str(store.url)
        gw = await start_batch_gateway(tmp_path, batch={"missed_runs": missed, "workers": 0},
                                       database_url=store_url)
        store = gw.security.store
        assert store is not None

        async def advanced() -> dict[str, object] | None:
            row = await store.schedules.get(sched["id"])  # type: ignore[union-attr]
            return row if row and row["next_run_at"] > time.time() else None
        row = await eventually(advanced, timeout=10, what="the schedule to move on")
        batches = await store.batches.find(owner=None, all_owners=True, after=None, limit=10)
        assert len(batches) == (1 if missed == "once" else 0)
        if batches:
            assert row["last_batch_id"] == batches[0]["id"]
            assert batches[0]["metadata"] == {"schedule_id": sched["id"]}
        # Paused schedules never run.
        await store.schedules.update(sched["id"], paused=True, next_run_at=time.time() - 1)
        await gw._attached[0].supervisor.tick()  # type: ignore[attr-defined]
        again = await store.batches.find(owner=None, all_owners=True, after=None, limit=10)
        assert len(again) == len(batches)
    finally:
        await gw.drain()


async def test_batch_progress_on_metrics(tmp_path: Path) -> None:
    gw = await start_batch_gateway(tmp_path)
    node, _ = await start_node(gw.ops.port)
    try:
        await until_served(gw)
        base = f"http://127.0.0.1:{gw.server.port}/v1"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            f = await http.post("/files", data={"purpose": "batch"}, files={
                "file": ("in.jsonl", jsonl([completion(f"m{i}", "x") for i in range(5)]))})
            b = await http.post("/batches", json={"input_file_id": f.json()["id"],
                                                  "endpoint": "/v1/completions"})
            batch_id = b.json()["id"]

            async def done() -> bool:
                r = await http.get(f"/batches/{batch_id}")
                return bool(r.json()["status"] == "completed")
            await eventually(done, timeout=20, what="completion")
            metrics = (await http.get(f"http://127.0.0.1:{gw.ops.port}/metrics")).text
        assert 'inferno_batch_item_outcomes_total{outcome="done"} 5.0' in metrics
        assert "inferno_batches_open" in metrics and "inferno_batch_items" in metrics
    finally:
        await node.drain()
        await gw.drain()


def test_cli_help_lists_batch_commands() -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "inferno", "batch", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for cmd in ("submit", "list", "get", "cancel", "download", "schedule", "worker"):
        assert cmd in out


async def test_files_expire(tmp_path: Path) -> None:
    gw = await start_batch_gateway(tmp_path, batch={"workers": 0})
    store = gw.security.store
    assert store is not None
    try:
        base = f"http://127.0.0.1:{gw.server.port}/v1"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            r = await http.post("/files", files={"file": ("e.jsonl", b"expiring\n")},
                                data={"purpose": "batch", "expires_after[anchor]": "created_at",
                                      "expires_after[seconds]": "3600"})
            assert r.status_code == 200, r.text
            f = r.json()
            assert f["expires_at"] == f["created_at"] + 3600
            bad = await http.post("/files", files={"file": ("e.jsonl", b"x\n")}, data={
                "purpose": "batch", "expires_after[anchor]": "created_at",
                "expires_after[seconds]": "5"})
            assert bad.status_code == 400
            assert bad.json()["error"]["param"] == "expires_after.seconds"
            row = await store.files.get(f["id"])
            assert row is not None
            content = gw._attached[0].files.path(row["sha256"])  # type: ignore[attr-defined]
            assert content.read_bytes() == b"expiring\n"
            await store.files.delete(f["id"])  # the row comes back already expired
            await store.files.create({**row, "expires_at": time.time() - 1})
            assert (await http.get(f"/files/{f['id']}")).status_code == 404
            await gw._attached[0].supervisor._sweep_files(time.time())  # type: ignore[attr-defined]
            assert await store.files.get(f["id"]) is None
            assert not content.exists()
    finally:
        await gw.drain()


async def test_cli_submit_wait_and_download(tmp_path: Path) -> None:
    gw = await start_batch_gateway(tmp_path)
    node, _ = await start_node(gw.ops.port)
    try:
        await until_served(gw)
        src = tmp_path / "in.jsonl"
        src.write_bytes(jsonl([completion(f"cli{i}", f"p {i}") for i in range(5)]))
        url = f"http://127.0.0.1:{gw.server.port}"

        async def cli(*args: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "inferno", "batch", *args, "--url", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode or 0, out.decode()

        code, out = await cli("submit", str(src), "--endpoint", "/v1/completions", "--wait")
        assert code == 0, out
        batch_id = out.splitlines()[0].strip()
        assert batch_id.startswith("batch_") and f"{batch_id}: completed" in out
        code, out = await cli("download", batch_id, "--dir", str(tmp_path))
        assert code == 0, out
        lines = parse_lines((tmp_path / f"{batch_id}_output.jsonl").read_bytes())
        assert sorted(o["custom_id"] for o in lines) == [f"cli{i}" for i in range(5)]
        code, out = await cli("list", "--json")
        assert code == 0 and batch_id in out
    finally:
        await node.drain()
        await gw.drain()

"""Hot swap and load/unload under load: how many requests fail (the target is none).

Imports the bundled SmolLM2 GGUF into a temporary store under three names (``smol:v1``,
``smol:v2``, ``other:v1``; one blob, hard-linked), starts ``inferno proxy`` and one
``inferno backend --model smol:v1 --model other:v1 --models-available third:v1`` (llama.cpp,
real generation) registered with it, then runs three phases of open-loop load:

0. **baseline**: the load of phase 1 with nothing else going on: what the node serves
   without failures on this machine (a failure here means the rate is too high for it).
1. **swap**: ``--rate`` requests/s (half streamed) for ``smol`` plus 1/s for ``other:v1``;
   at 1/3 of the phase ``inferno models deploy smol:v2 --replace smol:v1``, at 2/3 the
   rollback (``smol:v1 --replace smol:v2``).
2. **load/unload**: the same rate on ``other:v1`` while ``third:v1`` is loaded and unloaded
   on the same node, one cycle every ``--cycle`` seconds.

A request fails when its status is not 200 or its stream does not end with ``[DONE]``.

    .venv/bin/python bench/hot_swap.py [--seconds 30] [--rate 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx

from inferno.models.catalog import resolve_model
from inferno.models.store import ModelStore, parse_ref


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inferno(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "inferno", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_for(what: str, check: object, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if await check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


class Load:
    def __init__(self, http: httpx.AsyncClient, base: str) -> None:
        self.http, self.base = http, base
        self.results: Counter[tuple[str, str]] = Counter()  # (model, ok|failure kind)
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: Counter[str] = Counter()  # the failures' bodies, to say why

        self.latencies: list[float] = []

    async def one(self, model: str, stream: bool) -> None:
        started = time.monotonic()
        body = {"model": model, "max_tokens": 16, "temperature": 0.7, "stream": stream,
                "messages": [{"role": "user", "content": "Name a colour."}]}
        try:
            async with self.http.stream("POST", f"{self.base}/v1/chat/completions",
                                        json=body) as r:
                text = "".join([t async for t in r.aiter_text()])
            ok = r.status_code == 200 and (not stream or text.rstrip().endswith("[DONE]"))
            kind = "ok" if ok else f"status {r.status_code}" if r.status_code != 200 else "cut"
            if r.status_code != 200:
                self.errors[text[:160]] += 1
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
        self.results[(model, kind)] += 1
        self.latencies.append(time.monotonic() - started)

    def report(self) -> dict[str, object]:
        lat = sorted(self.latencies)
        return {"requests": dict_of(self.results), "errors": dict(self.errors),
                "latency_p50_s": round(lat[len(lat) // 2], 2),
                "latency_p95_s": round(lat[int(len(lat) * 0.95)], 2)}

    async def run(self, seconds: float, rate: float, models: list[tuple[str, float]]) -> None:
        """Open loop: each model's requests start on schedule whatever the others do."""
        async def arrivals(model: str, per_s: float) -> None:
            start, i = time.monotonic(), 0
            while (t := start + i / per_s) < start + seconds:
                await asyncio.sleep(max(0.0, t - time.monotonic()))
                self.tasks.append(asyncio.create_task(self.one(model, stream=i % 2 == 0)))
                i += 1

        await asyncio.gather(*(arrivals(m, r * rate) for m, r in models))
        await asyncio.gather(*self.tasks)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--cycle", type=float, default=3.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "INFERNO_MODELS_DIR": f"{tmp}/models",
               "INFERNO_PROXY_DATA_DIR": f"{tmp}/proxy", "INFERNO_DATABASE_URL": "none"}
        gguf = resolve_model("smollm2-135m").path
        store = ModelStore(Path(tmp) / "models")
        for ref in ("smol:v1", "smol:v2", "other:v1", "third:v1"):
            store.import_file(gguf, *parse_ref(ref))
        port, ops, nport, nops = (free_port() for _ in range(4))
        procs = [
            inferno("proxy", "--port", str(port), "--ops-port", str(ops), "--auth", "none",
                    "--log-level", "warning", env=env),
            inferno("backend", "--model", "smol:v1", "--model", "other:v1",
                    "--models-available", "third:v1", "--parallel", "4", "--port", str(nport),
                    "--ops-port", str(nops), "--discovery-lb", f"127.0.0.1:{ops}",
                    "--log-level", "warning", env=env),
        ]
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(timeout=60) as http:
                async def ready() -> bool:
                    ids = {m["id"] for m in (await http.get(f"{base}/v1/models")).json()["data"]}
                    return {"smol", "other:v1"} <= ids
                await wait_for("the node to register", ready)
                baseline = Load(http, base)
                await baseline.run(a.seconds, a.rate, [("smol", 1.0), ("other:v1", 0.25)])
                report = {"baseline": baseline.report(),
                          "swap": await swap_phase(http, base, a.seconds, a.rate),
                          "load_unload": await load_unload_phase(http, base, a.seconds, a.rate,
                                                                 a.cycle)}
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
    print(json.dumps(report, indent=2))


async def admin(http: httpx.AsyncClient, base: str, path: str, body: dict[str, str]) -> float:
    started = time.monotonic()
    r = await http.post(f"{base}/v1/models/{path}", json=body, timeout=300)
    if r.status_code != 200 or any(d["status"] != 200 for d in r.json()["data"]):
        raise SystemExit(f"{path} {body} failed: {r.text}")
    return time.monotonic() - started


async def swap_phase(http: httpx.AsyncClient, base: str, seconds: float,
                     rate: float) -> dict[str, object]:
    load = Load(http, base)
    runner = asyncio.create_task(load.run(seconds, rate, [("smol", 1.0), ("other:v1", 0.25)]))
    await asyncio.sleep(seconds / 3)
    deploy = await admin(http, base, "deploy", {"model": "smol:v2", "replace": "smol:v1"})
    await asyncio.sleep(seconds / 3 - deploy)
    rollback = await admin(http, base, "deploy", {"model": "smol:v1", "replace": "smol:v2"})
    await runner
    return {**load.report(), "deploy_s": round(deploy, 2), "rollback_s": round(rollback, 2)}


async def load_unload_phase(http: httpx.AsyncClient, base: str, seconds: float,
                            rate: float, cycle: float) -> dict[str, object]:
    load = Load(http, base)
    runner = asyncio.create_task(load.run(seconds, rate, [("other:v1", 1.0)]))
    cycles = 0
    while not runner.done():
        started = time.monotonic()
        await admin(http, base, "load", {"model": "third:v1"})
        await admin(http, base, "unload", {"model": "third:v1"})
        cycles += 1
        await asyncio.wait([runner], timeout=max(0.0, cycle - (time.monotonic() - started)))
    await runner
    return {**load.report(), "load_unload_cycles": cycles}


def dict_of(results: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (model, kind), n in sorted(results.items()):
        out.setdefault(model, {})[kind] = n
    return out


if __name__ == "__main__":
    asyncio.run(main())

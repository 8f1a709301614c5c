"""The dashboard with a big request log, and what tracing costs per request.

1. Seeds ``--rows`` request-log rows (default 1,000,000, one a second back from now, three
   keys, two models, 20 % errors) into SQLite and/or PostgreSQL, starts an in-process proxy
   on that store, and measures:
   - the Requests page (the dashboard's request-log API: server-side filters, keyset
     pages) per filter: p50 / p95 over ``--samples`` loads;
   - first contentful paint of /ui, /ui/requests and /ui/usage in Chromium (Playwright,
     /usr/bin/chromium), median of ``--paints`` fresh pages;
   - the Usage page's query (7 days by day, key and model) from the usage roll-up against
     the same figures scanned from the request log, alternating, ``--samples`` each.
2. Tracing: the same in-process proxy + fake node serve ``--requests`` sequential chat
   completions with tracing off, then on (OTLP/HTTP to an in-process receiver), three
   rounds alternating; CPU time of the whole process per request, and p50 latency.

    .venv/bin/python bench/ui.py [--rows 1000000] [--only sqlite|postgres|tracing]

PostgreSQL: INFERNO_BENCH_POSTGRES_URL (default postgresql+asyncpg://postgres@127.0.0.1/test),
in a schema of its own (bench_ui), dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import httpx2 as httpx  # noqa: E402
from tests.ui_seed import log_rows  # noqa: E402

from inferno.core.config import ProxySettings  # noqa: E402
from inferno.proxy.gateway import Gateway  # noqa: E402
from inferno.store import Store  # noqa: E402

PG_URL = os.environ.get("INFERNO_BENCH_POSTGRES_URL",
                        "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
FILTERS: dict[str, dict[str, str]] = {
    "newest": {}, "model": {"model": "other-model"}, "key": {"key_id": "key1"},
    "5xx": {"status": "5xx"}, "node+1h": {"node": "node-0", "since": "1h"},
    "key+5xx": {"key_id": "key2", "status": "5xx"},
}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def fill(store: Store, rows: int) -> float:
    started = time.perf_counter()
    now = time.time()
    chunk = 20_000
    for start in range(0, rows, chunk):
        batch = log_rows(min(chunk, rows - start), now=now - start)
        await store.requests.insert_many(batch)
    return time.perf_counter() - started


async def dashboard(settings: dict[str, Any], rows: int, samples: int, paints: int,
                    label: str) -> None:
    gw = Gateway(ProxySettings(port=0, ops_port=0, auth="none", **settings))
    started = time.perf_counter()
    await gw.security.store.start()  # type: ignore[union-attr]
    print(f"[{label}] store started (migrations) in {time.perf_counter() - started:.1f} s",
          flush=True)
    store = gw.security.store
    assert store is not None
    have = await store.requests.count()
    if have < rows:
        print(f"[{label}] seeding {rows - have:,} rows ...", flush=True)
        took = await fill(store, rows - have)
        print(f"[{label}] seeded in {took:.0f} s", flush=True)
    await gw.start()
    base = f"http://127.0.0.1:{gw.server.port}"
    try:
        print(f"\n{label}: {await store.requests.count():,} request-log rows")
        print(f"{'Requests page':<16}{'p50 ms':>9}{'p95 ms':>9}")
        allp: list[float] = []
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            for name, params in FILTERS.items():
                times = []
                for _ in range(samples):
                    t = time.perf_counter()
                    r = await http.get("/ui/requests", params=params)
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200 and "data-id=" in r.text, name
                allp += times
                print(f"{name:<16}{statistics.median(times):>9.1f}{pct(times, 0.95):>9.1f}")
            r = await http.get("/ui/requests")
            older = r.text.split('id="older" href="')[1].split('"')[0].replace("&amp;", "&")
            times = []
            for _ in range(samples):
                t = time.perf_counter()
                assert (await http.get(older)).status_code == 200
                times.append((time.perf_counter() - t) * 1000)
            allp += times
            print(f"{'page 2 (cursor)':<16}{statistics.median(times):>9.1f}"
                  f"{pct(times, 0.95):>9.1f}")
            print(f"{'all':<16}{statistics.median(allp):>9.1f}{pct(allp, 0.95):>9.1f}")
        await paint(base, paints)
        await usage_query(store, samples)
    finally:
        await gw.drain()


async def paint(base: str, n: int) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium",
                                          args=["--no-sandbox", "--disable-gpu"])
        print(f"{'First paint':<16}{'median ms':>10}{'max ms':>9}")
        for path in ("/ui", "/ui/requests", "/ui/usage"):
            fcp = []
            for _ in range(n):
                page = await browser.new_page()
                await page.goto(base + path, wait_until="load")
                value = await page.evaluate(
                    "performance.getEntriesByName('first-contentful-paint')[0]?.startTime")
                fcp.append(float(value or 0.0))
                await page.close()
            print(f"{path:<16}{statistics.median(fcp):>10.0f}{max(fcp):>9.0f}")
        await browser.close()


async def usage_query(store: Store, samples: int) -> None:
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 6 * 86_400))
    times: dict[str, list[float]] = {"roll-up": [], "log scan": []}
    answers = {}
    for _ in range(max(3, samples // 5)):  # a scan takes seconds: fewer rounds
        for name, read in (("roll-up", store.requests.usage),
                           ("log scan", store.requests.usage_from_log)):
            t = time.perf_counter()
            answers[name] = await read(since_day=since)
            times[name].append((time.perf_counter() - t) * 1000)
    rolled, scanned = answers["roll-up"], answers["log scan"]
    assert sum(u.requests for u in rolled) == sum(u.requests for u in scanned) > 0
    print(f"{'Usage query':<16}{'median ms':>10}{'max ms':>9}   "
          f"({sum(u.requests for u in rolled):,} requests in the window)")
    for name, xs in times.items():
        print(f"{name:<16}{statistics.median(xs):>10.1f}{max(xs):>9.1f}")
    ratio = statistics.median(times["log scan"]) / statistics.median(times["roll-up"])
    print(f"roll-up {ratio:.0f}x faster than the scan")


async def tracing(requests: int) -> None:
    from tests.conftest import start_fake_node

    from inferno.api.node import Registration
    from inferno.net import HttpServer, Request, Response

    async def ok(req: Request) -> Response:
        return Response(200, b"", content_type="application/x-protobuf")

    receiver = HttpServer(ok)
    await receiver.start("127.0.0.1", 0)
    body = {"model": "fake-model", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]}
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for _ in range(3):
        for mode in ("off", "on"):
            if mode == "on":
                os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver.port}"
            else:
                os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            gw = Gateway(ProxySettings(port=0, ops_port=0, auth="none", database_url="none"))
            await gw.start()
            node = await start_fake_node(node_id="n1")
            gw.pool.upsert(Registration(id="n1", address=f"127.0.0.1:{node.server.port}",
                                        metrics_port=node.ops.port, models=["fake-model"],
                                        lease_seconds=600))
            assert (gw.tracing is not None) == (mode == "on")
            url = f"http://127.0.0.1:{gw.server.port}/v1/chat/completions"
            async with httpx.AsyncClient() as http:
                for _ in range(200):  # warm-up
                    await http.post(url, json=body)
                lat = []
                cpu0 = time.process_time()
                for _ in range(requests):
                    t = time.perf_counter()
                    r = await http.post(url, json=body)
                    lat.append(time.perf_counter() - t)
                    assert r.status_code == 200
                cpu = (time.process_time() - cpu0) / requests
            results[mode].append((cpu, statistics.median(lat)))
            await node.drain()
            await gw.drain()
    await receiver.stop(grace=1)
    off_cpu = statistics.median(c for c, _ in results["off"])
    on_cpu = statistics.median(c for c, _ in results["on"])
    off_lat = statistics.median(lt for _, lt in results["off"])
    on_lat = statistics.median(lt for _, lt in results["on"])
    print(f"\nTracing, {requests} sequential requests x 3 rounds (proxy + node + client, "
          "one process)")
    print(f"{'':<6}{'CPU ms/req':>11}{'p50 ms':>9}")
    print(f"{'off':<6}{off_cpu * 1000:>11.3f}{off_lat * 1000:>9.3f}")
    print(f"{'on':<6}{on_cpu * 1000:>11.3f}{on_lat * 1000:>9.3f}")
    print(f"added: {1000 * (on_cpu - off_cpu):.3f} ms CPU, {1000 * (on_lat - off_lat):.3f} ms "
          f"p50 per request; ratio on/off CPU {on_cpu / off_cpu:.2f}x")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--paints", type=int, default=5)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--only", choices=["sqlite", "postgres", "tracing"])
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="keep the SQLite database here between runs (seeded once)")
    a = ap.parse_args()
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    if a.only in (None, "sqlite"):
        data_dir = a.data_dir or Path(tempfile.mkdtemp(prefix="inferno-bench-ui-"))
        await dashboard({"data_dir": data_dir}, a.rows, a.samples, a.paints, "SQLite")
    if a.only in (None, "postgres"):
        await dashboard({"database_url": PG_URL, "database_schema": "bench_ui",
                         "data_dir": Path(tempfile.mkdtemp(prefix="inferno-bench-ui-"))},
                        a.rows, a.samples, a.paints, "PostgreSQL")
    if a.only in (None, "tracing"):
        await tracing(a.requests)


if __name__ == "__main__":
    asyncio.run(main())

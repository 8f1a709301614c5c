"""The Models and Batches pages, and rebuilding the overview at start, with a full hour of
request log.

Seeds ``--rows`` request-log rows spread over the last hour (two models, two nodes) and
``--batches`` finished batches into a SQLite store, then, in the same run:

- proxy start on that store vs on an empty store (time to ready; the median of
  ``--starts`` starts each, alternated), how long the replay of the last hour into the
  live statistics takes in the background, and the longest event-loop stall meanwhile;
- a load of /ui/models (per model: a count and a percentile row over the hour) and of
  /ui/batches (a page of 50 with live counts and key names) vs /ui/requests (the request
  log's first page): p50 / p95 over ``--samples`` loads each.

    .venv/bin/python bench/ui_fleet.py [--rows 200000] [--batches 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import httpx2 as httpx  # noqa: E402
from tests.ui_seed import batch_row, log_rows  # noqa: E402

from inferno.api.node import Registration  # noqa: E402
from inferno.core.config import ProxySettings  # noqa: E402
from inferno.proxy.gateway import Gateway  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def gateway(data_dir: Path) -> Gateway:
    return Gateway(ProxySettings(port=0, ops_port=0, auth="none", data_dir=data_dir))


async def seed(data_dir: Path, rows: int, batches: int) -> None:
    gw = gateway(data_dir)
    store = gw.security.store
    assert store is not None
    await store.start()
    now = time.time()
    spacing = 3500 / rows
    for start in range(0, rows, 20_000):
        await store.requests.insert_many(log_rows(min(20_000, rows - start),
                                                  now=now - start * spacing, spacing=spacing))
    for i in range(batches):
        await store.batches.create(batch_row(i, "completed", now=now))
    await store.close()


async def start_time(data_dir: Path, rows: int) -> tuple[float, float, float]:
    """(seconds to ready, seconds until the last hour is replayed, the longest the event
    loop stalled meanwhile)."""
    gw = gateway(data_dir)
    t = time.perf_counter()
    await gw.start()
    ready = time.perf_counter() - t
    stall = 0.0
    while sum(p["requests"] for p in gw.stats.series(3600)) < rows:
        tick = time.perf_counter()
        await asyncio.sleep(0.005)
        stall = max(stall, time.perf_counter() - tick - 0.005)
        if time.perf_counter() - t > 120:
            raise RuntimeError("the replay did not finish in 2 minutes")
    replayed = time.perf_counter() - t
    await gw.drain()
    return ready, replayed, stall


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batches", type=int, default=2_000)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--samples", type=int, default=30)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as full_dir, tempfile.TemporaryDirectory() as empty:
        full = Path(full_dir)
        t = time.perf_counter()
        await seed(full, a.rows, a.batches)
        print(f"seeded {a.rows:,} rows and {a.batches:,} batches in "
              f"{time.perf_counter() - t:.0f} s")
        await start_time(Path(empty), 0)  # migrations once, outside the measurement
        with_log, bare = [], []
        for _ in range(a.starts):
            with_log.append(await start_time(full, a.rows))
            bare.append(await start_time(Path(empty), 0))
        s_full = statistics.median(r[0] for r in with_log)
        s_bare = statistics.median(r[0] for r in bare)
        print(f"proxy ready: {s_full * 1000:.0f} ms with {a.rows:,} rows to replay, "
              f"{s_bare * 1000:.0f} ms empty: {s_full / s_bare:.2f}x")
        print(f"replay done (in the background) after "
              f"{statistics.median(r[1] for r in with_log):.2f} s; longest event-loop stall "
              f"meanwhile {statistics.median(r[2] for r in with_log) * 1000:.0f} ms (median "
              f"of starts; empty store: {statistics.median(r[2] for r in bare) * 1000:.0f} ms)")

        gw = gateway(full)
        await gw.start()
        for i, model in enumerate(("fake-model", "other-model")):
            gw.pool.upsert(Registration(id=f"node-{i}", address=f"127.0.0.1:{9 + i}",
                                        metrics_port=9, models=[model], lease_seconds=3600))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.server.port}",
                                         timeout=60) as http:
                times: dict[str, list[float]] = {}
                for _ in range(a.samples):
                    for path in ("/ui/requests", "/ui/models", "/ui/batches"):
                        t = time.perf_counter()
                        r = await http.get(path)
                        times.setdefault(path, []).append(time.perf_counter() - t)
                        assert r.status_code == 200, (path, r.status_code)
            base = statistics.median(times["/ui/requests"])
            for path, xs in times.items():
                print(f"{path:14} p50 {pct(xs, 0.5) * 1000:7.1f} ms  p95 "
                      f"{pct(xs, 0.95) * 1000:7.1f} ms  p50 vs /ui/requests "
                      f"{statistics.median(xs) / base:.2f}x")
        finally:
            await gw.drain()


if __name__ == "__main__":
    asyncio.run(main())

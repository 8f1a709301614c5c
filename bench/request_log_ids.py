"""Request-log writer CPU per row: random request ids vs time-ordered ones.

    .venv/bin/python bench/request_log_ids.py [--rows 200000] [--rounds 2]

Inserts the same rows through ``RequestRepo.insert_many`` (SQLite, 4,096-row batches, as the
proxy's writer does) with 96-bit random ids and with ids that start with the time in ms, the
two kinds interleaved round by round, and prints CPU time per row and the ratio. Random ids
land all over the unique index on ``request_id``; time-ordered ones append at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import tempfile
from pathlib import Path

from inferno.proxy.accounting import new_request_id, new_row
from inferno.store import Store


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _run(kind: str, n: int, batch: int, tmp: Path) -> float:
    store = Store(f"sqlite:///{tmp / kind}-{random.random()}.db")
    await store.start()
    rng = random.Random(1)
    t0 = 1_795_600_000.0
    spent = 0.0
    try:
        for b in range(0, n, batch):
            rows = []
            for i in range(b, min(n, b + batch)):
                ts = t0 + i * 1e-4  # 10,000 requests/s
                rid = (f"{rng.getrandbits(96):024x}" if kind == "random"
                       else new_request_id(ts))  # what the proxy uses
                rows.append(new_row(rid, ts, "/v1/chat/completions"))
            c0 = _cpu()
            await store.requests.insert_many(rows)
            spent += _cpu() - c0
    finally:
        await store.close()
    return spent / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    out: dict[str, list[float]] = {"random": [], "time-ordered": []}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.rounds):
            for kind in out:
                out[kind].append(await _run(kind, args.rows, 4096, Path(d)))
    for kind, v in out.items():
        print(f"{kind:13s} {statistics.median(v):5.1f} us CPU per row (rounds: "
              f"{', '.join(f'{x:.1f}' for x in v)})")
    ratio = statistics.median(out["time-ordered"]) / statistics.median(out["random"])
    print(f"time-ordered / random: {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())

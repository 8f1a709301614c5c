"""``inferno proxy --workers N``: saturated throughput and CPU per request, 1 vs N workers.

    .venv/bin/python bench/proxy_workers.py                  # 1 vs 2 workers, 5 rounds
    .venv/bin/python bench/proxy_workers.py --rounds 2 --seconds 4   # a short run

Both proxies run at once (the idle one costs next to nothing) in front of one nginx node
answering a static chat completion (bench/gateway/upstreams.py, ``fast``), with the
default features on: an API key (auth), its rpm/tpm limits (rate limiting: with several
workers, the shared-memory table), the request log in SQLite. wrk drives 64 keep-alive
connections at each proxy in turn, alternating which goes first each round; medians.

CPU per request: user + system time of the proxy's processes (supervisor, workers, ops
front process) over the run, divided by the requests wrk completed. The CPU taken by wrk
itself and by nginx is reported too: on a 2-core machine they share the cores with the
proxy, which bounds what a second worker can add.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "gateway"))

import load
import upstreams as up

ROOT = Path(__file__).resolve().parents[1]


def _proxy(stack: up.Stack, tmp: Path, workers: int, node: int, key_env: dict[str, str]
           ) -> tuple[up.Proc, int]:
    port, ops = up.free_port(), up.free_port()
    argv = [sys.executable, "-m", "inferno", "proxy", "--port", str(port), "--ops-port",
            str(ops), "--backends", f"127.0.0.1:{node}", "--workers", str(workers),
            "--log-level", "warning"]
    proc = stack.start(f"proxy-{workers}", argv, key_env)
    up.wait_http(f"http://127.0.0.1:{ops}/health", proc, timeout=60)
    return proc, port


def _env(tmp: Path, bare: bool, extra: dict[str, str]) -> tuple[str, dict[str, str]]:
    env = {"INFERNO_PROXY_DATA_DIR": str(tmp / "data"), "INFERNO_PROXY_AUTH": "on",
           "INFERNO_PROXY_MAX_PER_NODE": "4096",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           **extra}
    if bare:  # no auth, no database: no limits, no request log
        env.update(INFERNO_PROXY_AUTH="none", INFERNO_PROXY_DATABASE_URL="none")
        return "", env
    out = subprocess.run([sys.executable, "-m", "inferno", "keys", "create", "--name", "bench",
                          "--rpm", "100000000", "--tpm", "1000000000"],
                         env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip().splitlines()[-1], env


def _switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of the proxy's processes (all threads)."""
    vol = invol = 0
    for p in load._children(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
            except OSError:
                continue
    return vol, invol


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _wait_ready(port: int, key: str, proc: up.Proc) -> None:
    """Until the static node has been probed and answers through the proxy."""
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                     data=load.body("fast", False).encode(),
                                     headers={"authorization": f"Bearer {key}",
                                              "content-type": "application/json"}
                                     if key else {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{proc.name} never answered; see {proc.log}")


def limiter_cost(n: int = 200_000) -> dict[str, float]:
    """Microseconds per admit + settle of one request with an rpm and a tpm bucket: the
    in-process limiter against the shared-memory table of several workers."""
    sys.path.insert(0, str(ROOT / "src"))
    from inferno.proxy.security.ratelimit import Bucket, LocalLimiter
    from inferno.proxy.security.ratelimit_shm import SharedLimiter, create_table

    table = create_table()
    buckets = [Bucket("{k}:r", 60 / 1e8, 1.0, 1.0), Bucket("{k}:t", 60 / 1e9, 60.0, 300.0)]
    out = {}
    try:
        for name, lim in (("local", LocalLimiter()), ("shared", SharedLimiter(table))):
            t0 = time.perf_counter()
            for _ in range(n):
                lim.admit_now(buckets)
                lim.settle(buckets[1:], -10)
            out[name] = (time.perf_counter() - t0) / n * 1e6
    finally:
        os.close(table)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="compared with 1 worker")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8, help="per wrk run")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--bare", action="store_true",
                    help="features off (no auth, no database): the proxy path alone")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment of both proxies (e.g. INFERNO_DATABASE_URL=...)")
    args = ap.parse_args()
    up.require_tools()
    cost = limiter_cost()
    print(f"rate limiter, admit + settle: in-process {cost['local']:.2f} us, shared table "
          f"{cost['shared']:.2f} us", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    stack = up.Stack(tmp)
    try:
        node = up.free_port()
        ports = {m: up.free_port() for m in up.MODELS}
        ports["fast"] = node
        nginx = stack.nginx("upstream", up.upstream_conf(tmp, ports))
        up.wait_http(f"http://127.0.0.1:{node}/v1/models", nginx)
        key, env = _env(tmp, args.bare, dict(e.split("=", 1) for e in args.env))
        lua = tmp / "bench.lua"
        lua.write_text(load.WRK_LUA)
        body = load.body("fast", False)
        proxies = {n: _proxy(stack, tmp, n, node, env) for n in (1, args.workers)}
        for proc, port in proxies.values():
            _wait_ready(port, key, proc)
            load.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", lua, args.conns, 2,
                     body, key)  # warm-up
        runs: dict[int, list[dict[str, float]]] = {n: [] for n in proxies}
        for r in range(args.rounds):
            order = list(proxies) if r % 2 == 0 else list(reversed(proxies))
            for n in order:
                proc, port = proxies[n]
                wrk_before, nginx_before = _children_cpu(), load.cpu_seconds(nginx.pid)
                sw_before = _switches(proc.pid)
                t0 = time.monotonic()
                run = load.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", lua,
                               args.conns, args.seconds, body, key, proc.pid)
                wall = time.monotonic() - t0
                sw = [b - a for a, b in zip(sw_before, _switches(proc.pid), strict=True)]
                row = {"rps": run.rps, "cpu_ms": run.cpu_ms_per_req or 0.0,
                       "errors": run.errors, "p99_ms": run.p99_ms,
                       "wrk_cores": (_children_cpu() - wrk_before) / wall,
                       "nginx_cores": (load.cpu_seconds(nginx.pid) - nginx_before) / wall,
                       "proxy_cores": (run.cpu_ms_per_req or 0.0) * run.rps / 1000,
                       "vol_sw": sw[0] / max(run.requests, 1),
                       "invol_sw": sw[1] / max(run.requests, 1)}
                runs[n].append(row)
                print(f"round {r + 1} workers={n}: {row['rps']:8.0f} req/s, "
                      f"{row['cpu_ms']:.3f} CPU-ms/req, proxy {row['proxy_cores']:.2f} cores, "
                      f"wrk {row['wrk_cores']:.2f}, nginx {row['nginx_cores']:.2f}, "
                      f"switches/req {row['vol_sw']:.3f} + {row['invol_sw']:.3f} forced, "
                      f"errors {row['errors']:.0f}", flush=True)
        med = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
               for n, rs in runs.items()}
        one, many = med[1], med[args.workers]
        print(f"\nmedians over {args.rounds} rounds x {args.seconds} s, {args.conns} connections:")
        for n, m in med.items():
            print(f"  {n} worker(s): {m['rps']:8.0f} req/s  {m['cpu_ms']:.3f} CPU-ms/req  "
                  f"p99 {m['p99_ms']:.1f} ms  proxy {m['proxy_cores']:.2f} cores  "
                  f"wrk {m['wrk_cores']:.2f}  nginx {m['nginx_cores']:.2f}  "
                  f"switches/req {m['vol_sw']:.3f} + {m['invol_sw']:.3f} forced")
        print(f"  throughput ratio {args.workers}/1: {many['rps'] / one['rps']:.2f}x; "
              f"CPU per request ratio: {many['cpu_ms'] / one['cpu_ms']:.2f}x")
        # The two runs of one round are seconds apart: their ratio sees the least drift of
        # a shared machine's load.
        pairs = list(zip(runs[1], runs[args.workers], strict=True))
        rps = [b["rps"] / a["rps"] for a, b in pairs]
        cpu = [b["cpu_ms"] / a["cpu_ms"] for a, b in pairs]
        print(f"  per round, {args.workers}/1: throughput "
              + " ".join(f"{x:.2f}" for x in rps) + f" (median {statistics.median(rps):.2f}x);"
              f" CPU per request " + " ".join(f"{x:.2f}" for x in cpu)
              + f" (median {statistics.median(cpu):.2f}x)")
        print("BENCH_JSON " + json.dumps({"runs": runs, "median": med}))
    finally:
        stack.close()


if __name__ == "__main__":
    main()

"""Benchmark: the proxy's control plane against the number of registered nodes.

    .venv/bin/python bench/control_plane.py                      # this checkout, N = 10..2000
    .venv/bin/python bench/control_plane.py --baseline-src /tmp/base/src --nodes 100,1000

For each N and each version (this checkout's ``src``, and ``--baseline-src`` if given, run
alternately): a real ``inferno proxy`` (auth and database off, so only the control plane
and routing remain), N node ids registered over HTTP on its ops port by a separate sender
process that runs the version's own ``RegistrationClient`` with the node's default
heartbeat and lease, every id pointing at one of a few fake nodes (a separate process
answering ``/health``, ``/telemetry`` and chat completions with canned bytes). Measured:

- idle CPU: ``utime + stime`` of the proxy and its ops front process (``/proc``) over
  ``--idle`` seconds, as % of one core (the sender and fake nodes are other processes);
- CPU per request: the same counters over a fixed open-loop load (``--rps`` for
  ``--load`` seconds), less the idle rate, per completed request;
- routing time per request: ``Router.route`` over the pool's candidates for the model,
  timed in a separate process for each version (same preset, same N nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
TICK = os.sysconf("SC_CLK_TCK")
MODEL = "bench"
DEAD_MODEL = "bench-dead"
COMPLETION = (b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
              b'"model":"bench","choices":[{"index":0,"message":{"role":"assistant",'
              b'"content":"ok"},"finish_reason":"stop"}],'
              b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}')


# ---- fake node: canned answers, no parsing beyond the request line and content-length ----
def _answer(body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


_ANSWERS = {
    b"/health": _answer(b"healthy", b"text/plain"),
    b"/telemetry": _answer(b'{"id":"fake","component":"backend","version":"0","state":'
                           b'"ready","uptime_s":1,"queue_depth":0}'),
    b"/v1/models": _answer(b'{"object":"list","data":[{"id":"bench","object":"model"}]}'),
    b"/v1/chat/completions": _answer(COMPLETION),
}


class _Fake(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            path = head.split(b" ", 2)[1]
            self.t.write(_ANSWERS.get(path, b"HTTP/1.1 404 Not Found\r\ncontent-length: 0"
                                              b"\r\n\r\n"))


async def _serve_fake(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    for port in ports:
        await loop.create_server(_Fake, "127.0.0.1", port, backlog=4096)
    await asyncio.Event().wait()


# ---- renewal sender: the version's own RegistrationClient, one per simulated node ----
async def _send_renewals(n: int, ops_port: int, fake_ports: list[int], dead_port: int,
                         cadence: tuple[float, float] | None) -> None:
    from inferno.api.node import Registration
    from inferno.backend.registration import RegistrationClient
    from inferno.core.config import BackendSettings
    from inferno.net import HttpClient

    fields = BackendSettings.model_fields
    interval = float(fields["heartbeat_interval"].default)
    lease = float(fields["lease_seconds"].default)
    if cadence is not None:  # --heartbeat/--lease: the node's settings, not its defaults
        interval, lease = cadence
    client = HttpClient(max_idle_per_host=n + 16)  # one kept-alive connection per node
    regs = []
    for i in range(n):
        port = fake_ports[i % len(fake_ports)]
        reg = Registration(id=f"bench-{i:05d}", address=f"127.0.0.1:{port}",
                           metrics_port=port, models=[MODEL], capacity=8, lease_seconds=lease)
        rc = RegistrationClient(f"127.0.0.1:{ops_port}", reg, interval=interval, client=client)
        rc.start()
        regs.append(rc)
        if i % 50 == 49:
            await asyncio.sleep(0.02)  # nodes come up over time, not in one burst
    print(json.dumps({"interval": interval, "lease": lease}), flush=True)
    # One more node, serving a model no request asks for, on its own fake node process:
    # it renews like the others until SIGUSR1, then falls silent (the bench kills its
    # fake node at the same time: it "dies").
    dead = Registration(id="bench-dead", address=f"127.0.0.1:{dead_port}",
                        metrics_port=dead_port, models=[DEAD_MODEL], lease_seconds=lease)
    timer = RegistrationClient(f"127.0.0.1:{ops_port}", dead, interval=interval, client=client)
    died = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, died.set)
    body = dead.model_dump_json().encode()
    while not died.is_set():
        with contextlib.suppress(Exception):
            resp = await client.request("127.0.0.1", ops_port, "POST", "/registration",
                                        headers=[(b"content-type", b"application/json")],
                                        body=body)
            await resp.read()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timer.next_wait(lease) if hasattr(timer, "next_wait")
                                       else interval):
                await died.wait()
    await asyncio.Event().wait()


# ---- routing micro-benchmark, in the version's own process ----
def _route_micro(n: int, iterations: int) -> None:
    from inferno.api.node import Registration
    from inferno.core.config import ProxySettings
    from inferno.proxy.pool import Pool
    from inferno.proxy.router import Router
    from inferno.proxy.routing import build_router

    pool = Pool(default_lease=3600)
    for i in range(n):
        pool.upsert(Registration(id=f"bench-{i:05d}", address=f"127.0.0.1:{9000 + i % 7}",
                                 metrics_port=9000, models=[MODEL], capacity=8))
    routing = ProxySettings.model_fields["routing"].default
    router = Router(routing, build_router(routing))
    rng = random.Random(1)
    nodes = list(pool.snapshot.by_model[MODEL])
    for node in nodes:  # some load spread over the pool, as under traffic
        node.outstanding = rng.randrange(4)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    profile = router.default
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(iterations):
            d = router.route(profile, pool.snapshot.by_model[MODEL], model=MODEL, stream=False,
                             user=None, session=None, body=body)
            d.order[0].outstanding += 1  # the request goes there ...
            d.order[0].outstanding -= 1  # ... and ends
        best = min(best, (time.perf_counter() - started) / iterations)
    print(json.dumps({"route_us": best * 1e6}), flush=True)


# ---- the driver ----
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    """utime + stime (s) of ``pid`` and its children processes (the ops front)."""
    return sum(_cpu_split(pid))


def _cpu_split(pid: int) -> tuple[float, float]:
    """(the proxy's own process, its children) CPU seconds."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children += [int(p) for p in f.read().split()]
    return _stat(pid), sum(_stat(p) for p in children)


def _stat(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    return 0.0


def _get(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def _load(port: int, rps: float, seconds: float) -> int:
    """Open-loop chat completions at ``rps``; returns how many got a 200."""
    sys.path.insert(0, str(SRC))
    from inferno.net import HttpClient

    client = HttpClient()
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    ok = 0

    async def one() -> None:
        nonlocal ok
        with contextlib.suppress(Exception):
            resp = await client.request("127.0.0.1", port, "POST", "/v1/chat/completions",
                                        headers=[(b"content-type", b"application/json")],
                                        body=body, header_timeout=10)
            await resp.read()
            ok += resp.status == 200

    tasks = []
    start = time.monotonic()
    for i in range(int(rps * seconds)):
        delay = start + i / rps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    await client.aclose()
    return ok


def _measure(src: Path, n: int, args: argparse.Namespace, tmp: Path,
             fake_ports: list[int]) -> dict[str, Any]:
    port, ops = _free_port(), _free_port()
    env = {**_env(src), "INFERNO_PROXY_AUTH": "none", "INFERNO_DATABASE_URL": "none",
           "INFERNO_PROXY_DATA_DIR": str(tmp / "data"), "INFERNO_PROXY_MAX_PER_NODE": "4096",
           # One process: what one proxy pays (with --workers N, each worker pays it).
           "INFERNO_PROXY_WORKERS": "1"}
    proxy = _spawn([sys.executable, "-c", "import sys; from inferno.cli import main; "
                    "sys.argv[0] = 'inferno'; main()", "proxy", "--port", str(port),
                    "--ops-port", str(ops), "--log-level", "warning"], env, tmp / "proxy.log")
    sender = doomed = None
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{ops}/health", timeout=1)
                break
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise RuntimeError(f"proxy did not start: {(tmp / 'proxy.log').read_text()}")
            time.sleep(0.2)
        cadence = [f"{args.heartbeat},{args.lease}"] if args.heartbeat else []
        dead_port = _free_port()
        doomed = _spawn([sys.executable, __file__, "--_fake", str(dead_port)], _env(SRC),
                        tmp / "doomed.log")
        sender = _spawn([sys.executable, __file__, "--_renew", str(n), str(ops),
                         ",".join(map(str, fake_ports)), str(dead_port), *cadence], _env(src),
                        tmp / "sender.log")
        while len(_get(f"http://127.0.0.1:{ops}/router/state")["nodes"]) < n:
            if time.monotonic() > deadline + 120 or sender.poll() is not None:
                raise RuntimeError("only some nodes registered: "
                                   + (tmp / "sender.log").read_text())
            time.sleep(1)
        time.sleep(args.settle)
        (m0, f0), t0 = _cpu_split(proxy.pid), time.monotonic()
        time.sleep(args.idle)
        (m1, f1), elapsed = _cpu_split(proxy.pid), time.monotonic() - t0
        idle_rate = (m1 + f1 - m0 - f0) / elapsed
        front_pct = 100 * (f1 - f0) / elapsed
        state0 = _get(f"http://127.0.0.1:{ops}/router/state")
        c0, t0 = _cpu(proxy.pid), time.monotonic()
        ok = asyncio.run(_load(port, args.rps, args.load))
        busy = _cpu(proxy.pid) - c0 - idle_rate * (time.monotonic() - t0)
        state1 = _get(f"http://127.0.0.1:{ops}/router/state")
        alive = sum(1 for nd in state1["nodes"] if nd["routable"] and nd["id"] != "bench-dead")
        routed = _route_stat(state0, state1)
        lease_left = _kill_one(sender, doomed, ops)
        return {"idle_pct": 100 * idle_rate, "front_pct": front_pct,
                "cpu_ms_per_req": 1000 * busy / max(ok, 1), "ok": ok, "routable": alive,
                "live_route_us": routed, "dead_lease_left": lease_left}
    finally:
        if sender is not None:
            _stop(sender)
        if doomed is not None:
            _stop(doomed)
        _stop(proxy)


def _kill_one(sender: subprocess.Popen[bytes], doomed: subprocess.Popen[bytes],
              ops: int) -> float | None:
    """Kill the dead node; seconds of its lease left when it left rotation (None: it was
    still in rotation when its lease ran out)."""
    os.killpg(doomed.pid, signal.SIGKILL)
    sender.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        nodes = {nd["id"]: nd for nd in _get(f"http://127.0.0.1:{ops}/router/state")["nodes"]}
        dead = nodes.get("bench-dead")
        if dead is None:
            return None  # expired first
        if not dead["routable"]:
            return float(dead["lease_expires_in_s"])
        time.sleep(0.5)
    return None


def _route_stat(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Mean routing time over the load window, where the proxy reports it."""
    ra, rb = a.get("routing"), b.get("routing")
    if not ra or not rb or rb["calls"] <= ra["calls"]:
        return None
    return 1e6 * (rb["seconds"] - ra["seconds"]) / (rb["calls"] - ra["calls"])


def _micro(src: Path, n: int, iterations: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--_route", str(n), str(iterations)],
                         env=_env(src), capture_output=True, text=True, check=True, timeout=300)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["route_us"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="10,100,400,1000,2000")
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/, for an A/B")
    ap.add_argument("--idle", type=float, default=15.0, help="idle window, s")
    ap.add_argument("--settle", type=float, default=25.0,
                    help="wait after registration (two heartbeats: steady state), s")
    ap.add_argument("--rps", type=float, default=200.0)
    ap.add_argument("--load", type=float, default=10.0, help="load window, s")
    ap.add_argument("--fakes", type=int, default=4, help="fake node ports")
    ap.add_argument("--_fake", nargs=1, help=argparse.SUPPRESS)
    ap.add_argument("--heartbeat", type=float, help="nodes' heartbeat_interval (default: "
                    "each version's default, with --lease)")
    ap.add_argument("--lease", type=float, default=0.0, help="nodes' lease_seconds")
    ap.add_argument("--_renew", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--_route", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._fake:
        asyncio.run(_serve_fake([int(p) for p in args._fake[0].split(",")]))
        return 0
    if args._renew:
        n, ops, fakes, dead, *more = args._renew
        beat, _, lease = more[0].partition(",") if more else ("", "", "")
        cadence = (float(beat), float(lease)) if more else None
        asyncio.run(_send_renewals(int(n), int(ops), [int(p) for p in fakes.split(",")],
                                   int(dead), cadence))
        return 0
    if args._route:
        _route_micro(int(args._route[0]), int(args._route[1]))
        return 0
    versions = {"this": SRC}
    if args.baseline_src:
        versions = {"base": args.baseline_src.resolve(), **versions}
    sizes = [int(x) for x in args.nodes.split(",")]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="inferno-cp-") as t:
        tmp = Path(t)
        fake_ports = [_free_port() for _ in range(args.fakes)]
        fake = _spawn([sys.executable, __file__, "--_fake", ",".join(map(str, fake_ports))],
                      _env(SRC), tmp / "fake.log")
        try:
            time.sleep(1)
            for n in sizes:
                for name, src in versions.items():
                    r = _measure(src, n, args, tmp, fake_ports)
                    r["route_us"] = _micro(src, n, max(200, 200_000 // max(n, 1)))
                    results[(name, n)] = r
                    print(f"{name:5} N={n:5}  idle {r['idle_pct']:6.2f} % core "
                          f"(ops front {r['front_pct']:.2f})   "
                          f"{r['cpu_ms_per_req']:6.3f} ms CPU/request   route "
                          f"{r['route_us']:8.1f} µs (live {r['live_route_us'] or 0:.1f})   "
                          f"ok {r['ok']}  routable {r['routable']}/{n}  dead node out with "
                          f"{r['dead_lease_left']} s of lease left", flush=True)
        finally:
            _stop(fake)
    print("\n| N | " + " | ".join(f"idle CPU % core ({v})" for v in versions) + " | "
          + " | ".join(f"routing µs/request ({v})" for v in versions) + " | "
          + " | ".join(f"CPU ms/request ({v})" for v in versions) + " | "
          + " | ".join(f"dead node: lease left, s ({v})" for v in versions) + " |")
    print("|---" * (1 + 4 * len(versions)) + "|")
    for n in sizes:
        cells = [f"{results[(v, n)]['idle_pct']:.1f}" for v in versions]
        cells += [f"{results[(v, n)]['route_us']:.1f}" for v in versions]
        cells += [f"{results[(v, n)]['cpu_ms_per_req']:.2f}" for v in versions]
        cells += [str(results[(v, n)]["dead_lease_left"]) for v in versions]
        print(f"| {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

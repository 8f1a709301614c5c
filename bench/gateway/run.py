"""Gateway benchmark: direct vs nginx reverse proxy vs aiohttp pass-through vs inferno proxy.

    make bench-gateway                       # or: .venv/bin/python bench/gateway/run.py
    .venv/bin/python bench/gateway/run.py --quick      # a short smoke run

Every scenario x concurrency cell runs the targets interleaved (direct, nginx, aiohttp,
inferno, direct, ...) ``--rounds`` times and reports medians, so a noisy shared machine
shifts all targets alike; compare ratios within one run, not across runs. Writes the
table to ``bench/results/gateway-<UTC time>.md`` (+ ``.json``) and ``gateway-latest.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load
import report
import upstreams as up

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
# inferno-bare: the same proxy with every optional feature off (no auth, no database, so
# no limits and no request log): the cost of the features is the difference.
# inferno-uvicorn / inferno-granian: the same proxy, default features on, served by uvicorn
# (httptools, raw ASGI) or granian (RSGI) instead of its own HTTP layer.
TARGETS = ("direct", "nginx", "aiohttp", "inferno-bare", "inferno", "inferno-uvicorn",
           "inferno-granian")
_SERVERS = {"inferno-uvicorn": "uvicorn", "inferno-granian": "granian"}
# inferno-base: the proxy of another checkout (--baseline-src), default features on: an
# A/B of two versions in one run.
BASELINE: dict[str, str] = {}
SCENARIOS = {  # name -> (model, streamed)
    "fast JSON": ("fast", False),
    "fast SSE": ("sse", True),
    "50 ms upstream": ("slow", False),
}


def start_stack(
    tmp: Path, workers: int, targets: list[str]
) -> tuple[up.Stack, dict[str, dict[str, int]], str, dict[str, int], int]:
    stack = up.Stack(tmp)
    try:
        return _start_targets(stack, tmp, workers, targets)
    except BaseException:  # sys.exit included: never leave nginx or a proxy running
        stack.close()
        raise


def _start_targets(
    stack: up.Stack, tmp: Path, workers: int, targets: list[str]
) -> tuple[up.Stack, dict[str, dict[str, int]], str, dict[str, int], int]:
    ports = {t: {m: up.free_port() for m in up.MODELS} for t in (*TARGETS, "inferno-base")}
    u = stack.nginx("upstream", up.upstream_conf(tmp, ports["direct"]))
    stack.upstream_ports = ports["direct"]
    for m in up.MODELS:
        up.wait_http(f"http://127.0.0.1:{ports['direct'][m]}/v1/models", u)
    n = stack.nginx("rproxy", up.nginx_proxy_conf(tmp, ports["nginx"], ports["direct"]))
    up.wait_http(f"http://127.0.0.1:{ports['nginx']['fast']}/v1/models", n)
    a = stack.start(
        "aiohttp",
        [sys.executable, str(Path(__file__).with_name("aiohttp_passthrough.py"))]
        + [f"{ports['aiohttp'][m]}:{ports['direct'][m]}" for m in up.MODELS],
    )
    up.wait_http(f"http://127.0.0.1:{ports['aiohttp']['fast']}/v1/models", a)
    key, env = _inferno_env(tmp)
    pids = {"nginx": n.pid, "aiohttp": a.pid}
    ops = 0
    for name in ("inferno", "inferno-bare", *_SERVERS, "inferno-base"):
        if name not in targets:
            continue
        bare = name == "inferno-bare"
        extra = (
            {
                "INFERNO_PROXY_DATA_DIR": str(tmp / "bare-data"),
                "INFERNO_PROXY_AUTH": "none",
                "INFERNO_DATABASE_URL": "none",
            }
            if bare
            else {}
        )
        proc, port_ops = _start_inferno(stack, name, ports[name], {**env, **extra}, workers)
        _wait_models(ports[name]["fast"], None if bare else key, proc)
        pids[name] = proc.pid
        if not bare:
            ops = port_ops
    return stack, ports, key, pids, ops


def _start_inferno(
    stack: up.Stack, name: str, ports: dict[str, int], env: dict[str, str], workers: int
) -> tuple[up.Proc, int]:
    ops = up.free_port()
    # Every model on its own upstream port: one static node per model.
    direct = stack.upstream_ports
    backends = ",".join(f"127.0.0.1:{direct[m]}" for m in up.MODELS)
    inferno = str(Path(sys.executable).with_name("inferno"))
    alt = _SERVERS.get(name)
    head = [sys.executable, str(Path(__file__).with_name("alt_proxy.py")), alt] if alt else [
        inferno, "proxy"]
    if name == "inferno-base":
        src = BASELINE["src"]
        head = [sys.executable, "-c",
                f"import sys; sys.path.insert(0, {src!r}); from inferno.cli import main; "
                "sys.argv[0] = 'inferno'; main()", "proxy"]
    argv = [
        *head,
        "--port",
        str(ports["fast"]),
        "--ops-port",
        str(ops),
        "--backends",
        backends,
        "--log-level",
        "warning",
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    proc = stack.start(name, argv, env)
    for m in up.MODELS:  # one port serves every model: the request's model picks the node
        ports[m] = ports["fast"]
    up.wait_http(f"http://127.0.0.1:{ops}/health", proc)
    return proc, ops


def _inferno_env(tmp: Path) -> tuple[str, dict[str, str]]:
    """Default features on: an API key (auth), its rpm/tpm limits (rate limiting), the
    request log in SQLite (the default store), Prometheus metrics (always on)."""
    env = {
        "INFERNO_PROXY_DATA_DIR": str(tmp / "inferno-data"),
        # Static nodes state no capacity (1); nginx takes any concurrency we send.
        "INFERNO_PROXY_MAX_PER_NODE": "4096",
        "INFERNO_PROXY_AUTH": "on",
    }
    inferno = str(Path(sys.executable).with_name("inferno"))
    out = subprocess.run(
        [inferno, "keys", "create", "--name", "bench", "--rpm", "100000000", "--tpm", "1000000000"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1], env


def _wait_models(port: int, key: str | None, proc: up.Proc) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models",
            headers={"authorization": f"Bearer {key}"} if key else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                have = {m["id"] for m in json.loads(resp.read())["data"]}
            if set(up.MODELS) <= have:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"inferno proxy never saw every upstream; see {proc.log}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=4, help="per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    ap.add_argument("--conns", default="1,16,64")
    ap.add_argument("--soak", type=int, default=100_000, help="requests for the RSS check")
    ap.add_argument("--workers", type=int, default=1, help="inferno proxy --workers")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s, soak 20k")
    ap.add_argument("--only", default="", help="comma-separated targets (default: all)")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="only profile inferno proxy with py-spy under 16 clients",
    )
    ap.add_argument("--profile-model", default="fast", choices=up.MODELS)
    ap.add_argument("--baseline-src", default="", metavar="PATH",
                    help="add target inferno-base: the proxy from another checkout's src/")
    args = ap.parse_args()
    if args.baseline_src:
        BASELINE["src"] = str(Path(args.baseline_src).resolve())
    if args.quick:
        args.seconds, args.rounds, args.soak = 2, 1, 20_000
    up.require_tools()
    conns = [int(c) for c in args.conns.split(",")]
    known = (*TARGETS, "inferno-base") if args.baseline_src else TARGETS
    targets = [t for t in known if not args.only or t in args.only.split(",") or t == "direct"]
    tmp = Path(tempfile.mkdtemp(prefix="inferno-bench-gw-"))
    results: dict[str, object] = {
        "machine": _machine(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "workers": args.workers,
    }
    stack, ports, key, pids, ops = start_stack(tmp, args.workers, targets)
    if args.profile:
        try:
            _profile(ports, key, pids["inferno"], tmp, args.profile, args.profile_model)
        finally:
            stack.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        lua = tmp / "post.lua"
        lua.write_text(load.WRK_LUA)
        cells = []
        for scen, (model, stream) in SCENARIOS.items():
            body = load.body(model, stream)
            for c in conns:
                runs: dict[str, list[load.Run]] = {t: [] for t in targets}
                for t in targets:  # warm-up: pools filled, code paths hot
                    load.wrk(_url(ports, t, model), lua, c, 1, body, _auth(t, key))
                for _ in range(args.rounds):
                    for t in targets:
                        runs[t].append(
                            load.wrk(
                                _url(ports, t, model),
                                lua,
                                c,
                                args.seconds,
                                body,
                                _auth(t, key),
                                pids.get(t),
                            )
                        )
                cells.append(report.cell(scen, c, runs))
                print(report.cell_line(cells[-1]), flush=True)
        results["cells"] = cells
        results["ttfb"] = _ttfb(ports, key, targets, args.rounds)
        print(json.dumps(results["ttfb"]), flush=True)
        if "inferno" in targets:
            results["health"] = _health_under_load(ports, key, lua, ops, args.seconds * 2)
            print(json.dumps(results["health"]), flush=True)
            results["soak"] = _soak(ports, key, lua, pids, ops, args.soak)
            print(json.dumps(results["soak"]), flush=True)
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    text = report.render(results)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"gateway-{stamp}.md").write_text(text)
    (RESULTS / f"gateway-{stamp}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "gateway-latest.md").write_text(text)


def _profile(
    ports: dict[str, dict[str, int]], key: str, pid: int, tmp: Path, seconds: int, model: str
) -> None:
    """py-spy on the proxy under load: a flame graph (SVG) and the top functions."""
    lua = tmp / "post.lua"
    lua.write_text(load.WRK_LUA)
    body = load.body(model, model in ("sse", "trickle"))
    load.wrk(_url(ports, "inferno", model), lua, 16, 2, body, key)
    RESULTS.mkdir(parents=True, exist_ok=True)
    svg = RESULTS / f"gateway-profile-{model}.svg"
    raw = tmp / "profile.txt"
    rec = _spy(pid, seconds, svg)
    run = load.wrk(_url(ports, "inferno", model), lua, 16, seconds + 1, body, key, pid)
    rec.wait(seconds + 30)
    # The graph's title is py-spy's command line: keep the checkout's location out of it.
    svg.write_text(svg.read_text().replace(f"{ROOT}/", ""))
    print(f"{run.rps:.0f} req/s, {run.cpu_ms_per_req:.3f} ms CPU/req; flame graph: {svg}")
    rec = _spy(pid, seconds, raw, "-f", "raw", "--threads")
    load.wrk(_url(ports, "inferno", model), lua, 16, seconds + 1, body, key, pid)
    rec.wait(seconds + 30)
    _top(raw)


def _spy(pid: int, seconds: int, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` for ``seconds`` at 250 Hz into ``out`` (in the background)."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    argv = [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-o", str(out)]
    return subprocess.Popen([*argv, "--nonblocking", *extra])


def _top(raw: Path, n: int = 40) -> None:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        c = int(count)
        total += c
        own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
    print(f"{total} samples. self%:")
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        print(f"  {100 * c / total:5.1f}  {f}")
    print("inclusive%:")
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[:n]:
        print(f"  {100 * c / total:5.1f}  {f}")


def _url(ports: dict[str, dict[str, int]], target: str, model: str) -> str:
    return f"http://127.0.0.1:{ports[target][model]}/v1/chat/completions"


def _auth(target: str, key: str) -> str | None:
    return key if target in ("inferno", "inferno-base") or target in _SERVERS else None


def _ttfb(
    ports: dict[str, dict[str, int]], key: str, targets: list[str], rounds: int
) -> dict[str, dict[str, float]]:
    body = load.body("trickle", True)
    clients = {t: load.StreamClient(ports[t]["trickle"], body, _auth(t, key)) for t in targets}
    firsts: dict[str, list[float]] = {t: [] for t in targets}
    spreads: dict[str, list[float]] = {t: [] for t in targets}
    seq: dict[str, list[float]] = {t: [] for t in targets}
    try:
        for t in targets:  # warm-up
            clients[t].one()
        # The order changes every round: the target measured right after another one was
        # measured up to 0.2 ms slower (whose process woke on which CPU), whichever it was.
        rng = random.Random(7)
        for _ in range(max(rounds, 2) * 10):
            for t in rng.sample(targets, len(targets)):
                events = clients[t].one()
                firsts[t].append(events[0])
                # First to last event: ~6 x 20 ms when relayed as they arrive, ~0 if buffered.
                spreads[t].append(events[-1] - events[0])
        # Sequential: each request sent as the previous stream ends, as one busy client
        # would, so the gateway idled only in the 20 ms between the previous stream's events.
        for _ in range(max(rounds, 2) * 2):
            for t in rng.sample(targets, len(targets)):
                clients[t].one()  # the first one follows the other targets' turns: idle
                seq[t] += [clients[t].one()[0] for _ in range(5)]
    finally:
        for c in clients.values():
            c.close()
    return {
        t: {
            "ttfc_p50_ms": load.median(firsts[t]),
            "ttfc_p99_ms": load.pct(firsts[t], 99),
            "spread_p50_ms": load.median(spreads[t]),
            "ttfc_seq_p50_ms": load.median(seq[t]),
        }
        for t in targets
    }


def _health_under_load(
    ports: dict[str, dict[str, int]], key: str, lua: Path, ops: int, seconds: float
) -> dict[str, float]:
    # The same probe against nginx (a C server on the same machine, same moment) is the
    # floor this shared machine's scheduling puts under any process's p99.
    prober = load.HealthProber(ops)
    floor = load.HealthProber(ports["direct"]["fast"], "/v1/models")
    prober.start()
    floor.start()
    run = load.wrk(_url(ports, "inferno", "fast"), lua, 64, seconds, load.body("fast", False), key)
    prober.stop()
    floor.stop()
    return {
        "proxy_rps": run.rps,
        "health_n": len(prober.latencies),
        "health_p50_ms": load.pct(prober.latencies, 50),
        "health_p99_ms": load.pct(prober.latencies, 99),
        "health_failures": prober.failures,
        "floor_p50_ms": load.pct(floor.latencies, 50),
        "floor_p99_ms": load.pct(floor.latencies, 99),
    }


def _soak(
    ports: dict[str, dict[str, int]],
    key: str,
    lua: Path,
    pids: dict[str, int],
    ops: int,
    total: int,
) -> dict[str, object]:
    """RSS across ``total`` requests of continuous load at 16 clients: inferno (with its
    request-log backlog: rows queued, not yet in SQLite), then inferno-bare alike."""
    out: dict[str, object] = {"requests": total}
    for name in ("inferno", "inferno-bare"):
        if name not in pids:
            continue
        pid = pids[name]
        samples: list[list[object]] = [[0, load.rss_mb(pid), _backlog(ops, name)]]
        done = errors = 0
        step = max(total // 4, 1)
        give_up = time.monotonic() + 600  # bounded even if the proxy stops answering
        while done < total and time.monotonic() < give_up:
            # wrk has no request count: run for time, sized from the measured rate.
            run = load.wrk(
                _url(ports, name, "fast"), lua, 16, 2, load.body("fast", False), _auth(name, key)
            )
            done += run.requests
            errors += run.errors
            if done >= int(str(samples[-1][0])) + step or done >= total:
                samples.append([done, load.rss_mb(pid), _backlog(ops, name)])
        time.sleep(5)
        samples.append(["+5 s idle", load.rss_mb(pid), _backlog(ops, name)])
        out[name] = {"samples": samples, "errors": errors}
    return out


def _backlog(ops: int, name: str) -> float:
    if name != "inferno":
        return float("nan")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ops}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("inferno_proxy_log_backlog "):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}"


if __name__ == "__main__":
    main()

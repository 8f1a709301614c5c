"""Models: pull throughput vs curl, resume after SIGKILL, verification under faults, show.

    .venv/bin/python bench/model_pull.py                 # ~1 min: 256 MiB, 3 rounds, 100 pulls
    .venv/bin/python bench/model_pull.py --size-mib 64 --rounds 1 --faulty 20   # smoke run

(a) ``inferno models pull http://127.0.0.1:P/file.gguf`` against ``curl -o`` on the same file
    from the same nginx (static files, sendfile), interleaved rounds; ratio of median times.
(b) a pull through a rate-limited location killed with SIGKILL at ~50 %, then resumed: the
    bytes re-downloaded (nginx's own count of body bytes sent, minus the file's size).
(c) pulls against the fault-injecting fake server (tests/fakes/file_server.py: random cut,
    flipped byte, stall, 503), each promised its sha256 as Hugging Face promises it: no
    corrupt blob may be accepted (every blob re-hashes to its name and equals the file).
(d) ``inferno models show`` on a >= 1 GiB sparse GGUF with a real header of many tensors:
    the header read in-process, and the whole CLI process.

Needs nginx (``bash scripts/system-deps.sh bench``) and curl. Everything runs in a temporary
directory on 127.0.0.1 and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
INFERNO = [PY, "-m", "inferno"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(tmp: Path, www: Path, port: int) -> subprocess.Popen[bytes]:
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 2;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
  log_format bytes '$request_uri $status $body_bytes_sent';
  access_log {tmp}/access.log bytes;
  sendfile on; tcp_nopush on;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {www};
    location /slow/ {{ alias {www}/; limit_rate 24m; }}
  }}
}}
"""
    )
    proc = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(conf)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nginx did not start; see " + str(tmp / "error.log"))


def sent_bytes(tmp: Path, path: str) -> int:
    total = 0
    for line in (tmp / "access.log").read_text().splitlines():
        uri, _status, n = line.split()
        if uri == path:
            total += int(n)
    return total


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    rng = random.Random(0)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            block = rng.randbytes(n)
            f.write(block)
            h.update(block)
            left -= n
    return h.hexdigest()


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def throughput(tmp: Path, url: str, size: int, rounds: int) -> dict[str, object]:
    from inferno.models.pull import pull
    from inferno.models.store import ModelStore

    curl_t, pull_t, inproc_t = [], [], []
    for _ in range(rounds):
        out = tmp / "curl.out"
        curl_t.append(timed(["curl", "-sS", "-o", str(out), url]))
        out.unlink()
        store = tmp / "store-a"
        pull_t.append(timed([*INFERNO, "models", "pull", "-q", url, "--models-dir", str(store)]))
        shutil.rmtree(store)
        store = tmp / "store-a2"  # the same pull in this process: no interpreter start-up
        t = time.perf_counter()
        asyncio.run(pull(url, ModelStore(store)))
        inproc_t.append(time.perf_counter() - t)
        shutil.rmtree(store)
    start_t = [timed([*INFERNO, "models", "--help"]) for _ in range(rounds)]
    mib = size / (1 << 20)
    c, p, i = (statistics.median(x) for x in (curl_t, pull_t, inproc_t))
    return {
        "curl_s": [round(x, 3) for x in curl_t],
        "cli_pull_s": [round(x, 3) for x in pull_t],
        "in_process_pull_s": [round(x, 3) for x in inproc_t],
        "cli_start_s (models --help)": round(statistics.median(start_t), 3),
        "curl_mib_s": round(mib / c),
        "cli_pull_mib_s": round(mib / p),
        "in_process_pull_mib_s": round(mib / i),
        "ratio_cli": round(c / p, 2),
        "ratio_in_process": round(c / i, 2),
    }


def limits(url: str, size: int, rounds: int) -> dict[str, object]:
    """What bounds a pull on this machine: sha256 speed, and bare receive loops."""
    import httpx2

    from inferno.net.client import HttpClient

    block = os.urandom(1 << 20)
    sha = []
    for _ in range(rounds):
        h, t = hashlib.sha256(), time.perf_counter()
        for _ in range(256):
            h.update(block)
        sha.append(256 / (time.perf_counter() - t))

    async def httpx_raw(chunk_size: int | None) -> float:
        async with httpx2.AsyncClient() as c:
            t = time.perf_counter()
            async with c.stream("GET", url) as r:
                async for _ in r.aiter_raw(chunk_size=chunk_size):
                    pass
            return size / (1 << 20) / (time.perf_counter() - t)

    async def own() -> float:
        u = url.split("/", 3)
        host, port = u[2].rsplit(":", 1)
        c = HttpClient()
        t = time.perf_counter()
        r = await c.request(host, int(port), "GET", "/" + u[3])
        while await r.next_chunk(30.0) is not None:
            pass
        rate = size / (1 << 20) / (time.perf_counter() - t)
        await c.aclose()
        return rate

    def med(xs: list[float]) -> int:
        return round(statistics.median(xs))

    return {
        "sha256_1mib_updates_mib_s": med(sha),
        "httpx2_aiter_raw_mib_s": med([asyncio.run(httpx_raw(None)) for _ in range(rounds)]),
        "httpx2_aiter_raw_1mib_mib_s": med(
            [asyncio.run(httpx_raw(1 << 20)) for _ in range(rounds)]
        ),
        "inferno_net_client_mib_s": med([asyncio.run(own()) for _ in range(rounds)]),
        "curl_to_dev_null_mib_s": med(
            [
                size / (1 << 20) / timed(["curl", "-sS", "-o", "/dev/null", url])
                for _ in range(rounds)
            ]
        ),
    }


def resume(tmp: Path, port: int, size: int) -> dict[str, object]:
    path = "/slow/file.gguf"
    url = f"http://127.0.0.1:{port}{path}"
    store = tmp / "store-b"
    before = sent_bytes(tmp, path)
    child = subprocess.Popen(
        [*INFERNO, "models", "pull", "--json", url, "--models-dir", str(store)],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    done = 0
    for line in child.stdout:
        event = json.loads(line)
        done = event.get("done", 0)
        if event.get("event") == "progress" and done >= size // 2:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    time.sleep(0.3)  # nginx writes its log line when the connection closes
    first = sent_bytes(tmp, path) - before
    subprocess.run(
        [*INFERNO, "models", "pull", "-q", url, "--models-dir", str(store)], check=True, env=ENV
    )
    time.sleep(0.3)
    total = sent_bytes(tmp, path) - before
    part = -(-size // 4)
    return {
        "killed_at_bytes": done,
        "first_run_bytes": first,
        "second_run_bytes": total - first,
        "re_downloaded_bytes": total - size,
        "part_bytes": part,
        "within_one_part": total - size <= part,
    }


async def faulty(tmp: Path, n: int, seed: int = 1) -> dict[str, object]:
    from tests.fakes.file_server import FileServer

    from inferno.core.errors import InfernoError
    from inferno.models.download import FetchOptions, fetch
    from inferno.models.remote import Remote
    from inferno.models.store import ModelStore, hash_file

    rng = random.Random(seed)
    srv = await FileServer().start()
    store = ModelStore(tmp / "store-c")
    options = FetchOptions(
        backoff=0.01,
        max_backoff=0.05,
        stall_timeout=0.3,
        connect_timeout=2,
        parallel_min_size=256 << 10,  # half the pulls use parts
        checkpoint=32 << 10,
    )
    bodies: dict[str, bytes] = {}
    outcome = {"ok_first_try": 0, "rejected_then_ok": 0, "failed_twice": 0, "faults": 0}
    try:
        for i in range(n):
            body = rng.randbytes(rng.randint(64 << 10, 1 << 20))
            path = f"/f{i}.gguf"
            srv.files[path] = body
            digest = hashlib.sha256(body).hexdigest()
            bodies[digest] = body
            f = srv.faults
            f.chunk = 16 << 10
            kinds = rng.sample(["cut", "flip", "stall", "503"], rng.randint(1, 2))
            outcome["faults"] += len(kinds)
            f.cut_at = rng.randrange(len(body)) if "cut" in kinds else None
            f.cuts = 1
            f.flip_at = rng.randrange(len(body)) if "flip" in kinds else None
            f.stall_at = rng.randrange(len(body)) if "stall" in kinds else None
            f.stall_for = 1.0
            f.errors = [(503, 0.0)] if "503" in kinds else []
            remote = Remote(srv.url + path, f"f{i}.gguf", size=len(body), sha256=digest)
            try:
                await fetch(remote, store, options=options)
                outcome["ok_first_try"] += 1
            except InfernoError:
                f.flip_at = None  # the pull is run again, as a user would
                try:
                    await fetch(remote, store, options=options)
                    outcome["rejected_then_ok"] += 1
                except InfernoError:
                    outcome["failed_twice"] += 1
    finally:
        await srv.stop()
    corrupt = 0
    blobs = [p for p in store.blobs.glob("sha256-*") if not p.suffix]
    for blob in blobs:
        name = blob.name.removeprefix("sha256-")
        if hash_file(blob)[0] != name or blob.read_bytes() != bodies.get(name):
            corrupt += 1
    return {
        "pulls": n,
        **outcome,
        "blobs": len(blobs),
        "corrupt_blobs_accepted": corrupt,
        "quarantined": len(list(store.quarantine.iterdir())),
    }


def show(tmp: Path, gib: float, tensors: int) -> dict[str, object]:
    import gguf
    import numpy as np

    from inferno.models.gguf_info import read_gguf
    from inferno.models.store import ModelStore

    path = tmp / "big.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(tensors // 9)
    w.add_context_length(8192)
    w.add_embedding_length(4096)
    w.add_head_count(32)
    w.add_head_count_kv(8)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    per = int(gib * (1 << 30)) // tensors // 4
    for i in range(tensors):
        w.add_tensor_info(f"blk.{i}.weight", [per], np.dtype(np.float32), per * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    header = path.stat().st_size
    align = 32
    data_start = -(-header // align) * align
    os.truncate(path, data_start + tensors * (-(-(per * 4) // align) * align))  # sparse data
    store = ModelStore(tmp / "store-d")
    store.import_file(path, "local/big")  # a hard link
    blob = store.blob_path(store.get_manifest("local/big").layers[0].digest)
    reads = []
    for _ in range(5):
        t = time.perf_counter()
        info = read_gguf(blob)
        reads.append((time.perf_counter() - t) * 1000)
    cli = [*INFERNO, "models", "show", "local/big", "--models-dir", str(store.root)]
    runs = [timed(cli) * 1000 for _ in range(3)]
    help_runs = [timed([*INFERNO, "models", "--help"]) * 1000 for _ in range(3)]
    return {
        "file_gib": round(path.stat().st_size / (1 << 30), 2),
        "tensors": tensors,
        "parameters": info.parameters,
        "read_gguf_ms_median": round(statistics.median(reads), 1),
        "cli_show_ms_median": round(statistics.median(runs)),
        "cli_models_help_ms_median": round(statistics.median(help_runs)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--faulty", type=int, default=100)
    ap.add_argument("--show-gib", type=float, default=1.5)
    ap.add_argument("--tensors", type=int, default=2000)
    ap.add_argument(
        "--only",
        default="labcd",
        help="parts to run: l (limits), a (throughput), b (resume), c (faults), d (show)",
    )
    args = ap.parse_args()
    only = set(args.only)
    for tool in ("nginx", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: bash scripts/system-deps.sh bench")
    with tempfile.TemporaryDirectory(prefix="inferno-pull-bench-") as d:
        tmp = Path(d)
        www = tmp / "www"
        www.mkdir()
        for p in (tmp, www):
            p.chmod(0o755)
        size = args.size_mib << 20
        make_file(www / "file.gguf", size)
        (www / "file.gguf").chmod(0o644)
        port = free_port()
        nginx = start_nginx(tmp, www, port)
        results: dict[str, object] = {
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "size_mib": args.size_mib,
        }
        try:
            url = f"http://127.0.0.1:{port}/file.gguf"
            if "l" in only:
                results["limits"] = limits(url, size, args.rounds)
                print(json.dumps({"limits": results["limits"]}), flush=True)
            if "a" in only:
                results["a_throughput"] = throughput(tmp, url, size, args.rounds)
                print(json.dumps({"a_throughput": results["a_throughput"]}), flush=True)
            if "b" in only:
                results["b_resume"] = resume(tmp, port, size)
                print(json.dumps({"b_resume": results["b_resume"]}), flush=True)
        finally:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
        if "c" in only:
            results["c_faults"] = asyncio.run(faulty(tmp, args.faulty))
            print(json.dumps({"c_faults": results["c_faults"]}), flush=True)
        if "d" in only:
            results["d_show"] = show(tmp, args.show_gib, args.tensors)
            print(json.dumps({"d_show": results["d_show"]}), flush=True)


if __name__ == "__main__":
    main()

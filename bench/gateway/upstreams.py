"""The processes of a gateway benchmark: nginx upstreams, nginx as reverse proxy, the
aiohttp pass-through, and ``inferno proxy``, each on 127.0.0.1 in a temporary directory.

No Python code of ours serves the upstream: one nginx instance (run as the current user,
in the foreground, with its own prefix; no systemd) answers on four ports, one per model:

- ``fast``    a static chat completion (``return 200``, content-length);
- ``sse``     a static SSE body (the whole stream at once, content-length);
- ``slow``    the same completion after 50 ms (``echo_sleep``, nginx's echo module);
- ``trickle`` an SSE stream of 6 events 20 ms apart, flushed one by one (chunked), to
  measure time to first chunk and to see that a gateway relays chunks as they arrive.

Every port also answers ``GET /v1/models`` with its one model, so ``inferno proxy
--backends`` discovers which node serves which model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
MODELS = ("fast", "sse", "slow", "trickle")

COMPLETION = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    '"model":"bench","choices":[{"index":0,"message":{"role":"assistant",'
    '"content":"The capital of France is Paris."},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":14,"completion_tokens":8,"total_tokens":22}}'
)


def _event(i: int, text: str) -> str:
    return (
        'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":'
        '1700000000,"model":"bench","choices":[{"index":0,"delta":{"content":"'
        + text
        + '"},"finish_reason":null}]}\\n\\n'
    )


_WORDS = ("The", " capital", " of", " France", " is", " Paris.")
SSE_BODY = "".join(_event(i, w) for i, w in enumerate(_WORDS)) + "data: [DONE]\\n\\n"
TRICKLE_GAP_S = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _common(tmp: Path, name: str, workers: int) -> str:
    load = f"load_module {ECHO_MODULE};\n" if name == "upstream" else ""
    return f"""{load}worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}_body;
  proxy_temp_path {tmp}/{name}_proxy;
  fastcgi_temp_path {tmp}/{name}_fcgi;
  uwsgi_temp_path {tmp}/{name}_uwsgi;
  scgi_temp_path {tmp}/{name}_scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
"""


def _models_location(model: str) -> str:
    body = (
        '{"object":"list","data":[{"id":"'
        + model
        + '","object":"model","created":0,"owned_by":"bench"}]}'
    )
    return f"    location = /v1/models {{ default_type application/json; return 200 '{body}'; }}\n"


def upstream_conf(tmp: Path, ports: dict[str, int]) -> str:
    trickle = "".join(
        f"      echo -n '{_event(i, w)}'; echo_flush; echo_sleep {TRICKLE_GAP_S};\n"
        for i, w in enumerate(_WORDS)
    )
    handlers = {
        "fast": f"default_type application/json; return 200 '{COMPLETION}';",
        "sse": f"default_type text/event-stream; return 200 '{SSE_BODY}';",
        "slow": "default_type application/json; echo_read_request_body; echo_sleep 0.05; "
        f"echo -n '{COMPLETION}';",
        "trickle": "default_type text/event-stream; echo_read_request_body;\n"
        + trickle
        + "      echo -n 'data: [DONE]\\n\\n';",
    }
    out = _common(tmp, "upstream", 1)
    for model, port in ports.items():
        out += (
            f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
            + _models_location(model)
            + f"    location / {{\n      {handlers[model]}\n    }}\n  }}\n"
        )
    return out + "}\n"


def nginx_proxy_conf(tmp: Path, listen: dict[str, int], upstream: dict[str, int]) -> str:
    """nginx as reverse proxy: pooled keep-alive upstream connections, no buffering."""
    out = _common(tmp, "rproxy", 1)
    for model, port in listen.items():
        out += f"""  upstream up_{model} {{ server 127.0.0.1:{upstream[model]}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up_{model};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
"""
    return out + "}\n"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Stack:
    """Every process of one benchmark run; ``close()`` stops them all."""

    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    upstream_ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as fh:
            popen = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def nginx(self, name: str, conf: str) -> Proc:
        path = self.tmp / f"{name}.conf"
        path.write_text(conf)
        return self.start(name, ["nginx", "-p", str(self.tmp), "-c", str(path)])

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()


def wait_http(
    url: str, proc: Proc, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            sys.exit(f"{proc.name} exited early; see {proc.log}:\n{proc.log.read_text()[-2000:]}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{proc.name} did not answer {url} within {timeout:.0f} s; see {proc.log}")


def require_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None]
    if not Path(ECHO_MODULE).exists():
        missing.append("libnginx-mod-http-echo")
    if missing:
        sys.exit(f"missing: {', '.join(missing)}; run: bash scripts/system-deps.sh bench")

"""The inferno proxy served by another HTTP server, for the gateway benchmark's comparison.

    python bench/gateway/alt_proxy.py uvicorn|granian --port P --ops-port O --backends B

Same settings (env ``INFERNO_*``), same features, same handler; only the HTTP server that
parses requests and writes responses differs: uvicorn (httptools, a raw ASGI callable,
no framework; ``alt_uvicorn.py``) or granian (Rust/hyper, RSGI; ``alt_granian.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inferno.cli import _settings  # the CLI's own loader: CLI > env > YAML > defaults
from inferno.core.config import ProxySettings
from inferno.proxy.gateway import Gateway
from inferno.wiring import configure_logging, run_service


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("server", choices=("uvicorn", "granian"))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ops-port", type=int, required=True)
    ap.add_argument("--backends", required=True)
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args()
    settings = _settings(ProxySettings, {"port": args.port, "ops_port": args.ops_port,
                                         "backends": args.backends}, None)
    configure_logging(args.log_level)
    if args.server == "uvicorn":
        from alt_uvicorn import UvicornServer as Server
    else:
        from alt_granian import GranianServer as Server  # type: ignore[assignment]

    def build() -> Gateway:
        gw = Gateway(settings)
        s = settings
        server: Any = Server(gw.api.handle, max_body_size=s.max_body_size,
                             max_header_size=s.max_header_size,
                             on_reject=gw.security.log.record_rejected)
        gw.server = server
        return gw

    run_service(build)


if __name__ == "__main__":
    main()

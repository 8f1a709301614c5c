"""Baseline: the plainest useful Python gateway - aiohttp server + pooled aiohttp client on
uvloop, no features at all (no parsing, no auth, no limits, no log, no metrics).

It forwards method, path, body and content-type to the upstream chosen by the port the
request arrived on, and relays the answer (streamed chunk by chunk for SSE).

    python aiohttp_passthrough.py LISTEN_PORT:UPSTREAM_PORT [...]
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web

_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"}


def make_app(routes: dict[int, int]) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(_: web.Application) -> None:
        conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=300, ttl_dns_cache=None)
        session["s"] = aiohttp.ClientSession(connector=conn, auto_decompress=False)

    async def stop(_: web.Application) -> None:
        await session["s"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        upstream = routes[sockname[1]]
        body = await request.read()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with session["s"].request(
            request.method,
            f"http://127.0.0.1:{upstream}{request.rel_url}",
            data=body,
            headers=headers,
        ) as up:
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            if up.content_type == "text/event-stream":
                resp = web.StreamResponse(status=up.status, headers=out_headers)
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
            return web.Response(status=up.status, body=await up.read(), headers=out_headers)

    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


async def main(routes: dict[int, int]) -> None:
    runner = web.AppRunner(make_app(routes), access_log=None)
    await runner.setup()
    for port in routes:
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    pairs = dict(tuple(map(int, a.split(":"))) for a in sys.argv[1:])
    uvloop.run(main(pairs))

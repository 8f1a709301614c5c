"""The dashboard's static files and templates, shipped inside the package.

Static files are read once at start-up into memory and served from ``/ui/static/`` with
a content hash in their ETag; only files that exist there are served (no path joins on
client input). Templates are Jinja2 with autoescaping on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2

from inferno.net import Request, Response

HERE = Path(__file__).parent
STATIC_PREFIX = "/ui/static/"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


class StaticFiles:
    def __init__(self, root: Path = HERE / "static") -> None:
        self._files: dict[str, tuple[bytes, str, str]] = {}
        for path in sorted(root.rglob("*")):
            ctype = _TYPES.get(path.suffix)
            if path.is_file() and ctype is not None:
                data = path.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                self._files[STATIC_PREFIX + path.relative_to(root).as_posix()] = (
                    data, ctype, etag)

    def __contains__(self, path: str) -> bool:
        return path in self._files

    def serve(self, req: Request) -> Response:
        data, ctype, etag = self._files[req.path]
        headers = [("etag", etag), ("cache-control", "public, max-age=300"),
                   ("x-content-type-options", "nosniff")]
        if req.header("if-none-match") == etag:
            return Response(304, b"", headers=headers, content_type=ctype)
        return Response(200, data, headers=headers, content_type=ctype)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["ms"] = lambda v: "–" if v is None else f"{1000 * v:.0f} ms"
    env.filters["num"] = lambda v, d=2: "–" if v is None else f"{v:,.{d}f}"
    return env

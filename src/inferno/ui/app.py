"""The dashboard at ``/ui``: server-rendered pages over a :class:`DataSource`.

Each page is one HTML response with its data inside (at most two more calls: the live
stream, and a request's or a batch's details on click). Mounted by the proxy through ``owns`` and
``handle``; admin only, like the admin API (Bearer admin key, or the login form's session
cookie). Forms post back here (keys; a model deploy and a batch cancel, which run the
proxy's own endpoints as the signed-in admin); ``SameSite=Strict`` and an Origin check
keep other sites' forms out.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from inferno.api.dashboard import DataSource, Viewer
from inferno.core.errors import AuthenticationError, InfernoError, NotFound, PermissionDenied
from inferno.net import BodySink, Request, Response, StreamingResponse
from inferno.ui.assets import StaticFiles, templates
from inferno.ui.live import live, live_batches
from inferno.ui.pages import Pages
from inferno.ui.pages_fleet import OBJECT_ID
from inferno.ui.sessions import Sessions

PREFIX = "/ui"
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_PAGE_HEADERS = [("content-security-policy", _CSP), ("x-frame-options", "DENY"),
                 ("referrer-policy", "no-referrer"), ("cache-control", "no-store"),
                 ("x-content-type-options", "nosniff")]


class Dashboard:
    def __init__(self, source: DataSource, *, live_interval: float = 1.0) -> None:
        self._source = source
        self._sessions = Sessions(source)
        self._static = StaticFiles()
        self._pages = Pages(source, templates())
        self._live_interval = live_interval

    def owns(self, path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    def body_sink(self, req: Request) -> BodySink | None:
        return None  # the login form's few bytes are read like any other body

    async def handle(self, req: Request) -> Response | StreamingResponse:
        path = req.path.rstrip("/") or "/"
        if req.path in self._static and req.method in ("GET", "HEAD"):
            return self._static.serve(req)
        if path == "/ui/login":
            return await self._login(req)
        viewer = self._sessions.viewer(req)
        if viewer is None:
            if req.method == "GET" and path != "/ui/live" and "/api/" not in path:
                return _redirect("/ui/login")
            raise AuthenticationError("Sign in with an admin API key.")
        if not viewer.admin:
            raise PermissionDenied("The dashboard needs an API key with the admin scope.")
        if req.method == "POST":
            _same_origin(req)
            return await self._post(req, path, viewer)
        if req.method != "GET":
            raise NotFound(f"Unknown route {req.method} {req.path}.")
        q = {k: v[-1] for k, v in parse_qs(req.query or "").items()}
        if path == "/ui/live":
            if q.get("view") == "batches":
                return live_batches(self._source, q.get("ids", ""), self._live_interval)
            return live(self._source, req, self._live_interval)
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "files" and parts[4] == "content" \
                and OBJECT_ID.fullmatch(parts[3]):
            resp = await self._source.file_content(viewer, parts[3])
            assert isinstance(resp, Response | StreamingResponse)
            return resp
        if path.startswith("/ui/api/batches/"):
            batch = await self._source.batch(path.rsplit("/", 1)[-1])
            if batch is None:
                raise NotFound("No batch with this id.")
            return Response.json(batch)
        if path.startswith("/ui/api/requests/"):
            row = await self._source.request(path.rsplit("/", 1)[-1])
            if row is None:
                raise NotFound("No request with this id.")
            return Response.json(row)
        page = self._pages.route(path)
        if page is None:
            raise NotFound(f"Unknown page {req.path}.")
        return _html(await page(q, viewer))

    async def _post(self, req: Request, path: str, viewer: Viewer) -> Response:
        form = {k: v[-1] for k, v in parse_qs(req.body.decode("utf-8", "replace")).items()}
        if path == "/ui/logout":
            return _redirect("/ui/login", cookie=self._sessions.end(req))
        if path == "/ui/keys":
            return _html(await self._pages.create_key(form))
        if path.startswith("/ui/keys/") and path.endswith("/revoke"):
            await self._source.revoke_key(path.split("/")[3])
            return _redirect("/ui/usage")
        fleet = self._pages.fleet
        if path == "/ui/models/deploy":
            try:
                return _html(await fleet.deploy(form, viewer))
            except InfernoError as exc:
                return _html(await fleet.models({}, viewer, error=exc.message),
                             status=exc.status_code)
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "batches" and parts[4] == "cancel" \
                and OBJECT_ID.fullmatch(parts[3]):
            try:
                await self._source.cancel_batch(viewer, parts[3])
            except InfernoError as exc:
                return _html(await fleet.batches({}, viewer, error=exc.message),
                             status=exc.status_code)
            return _redirect("/ui/batches")
        raise NotFound(f"Unknown route POST {req.path}.")

    async def _login(self, req: Request) -> Response:
        if req.method == "POST":
            _same_origin(req)
            form = parse_qs(req.body.decode("utf-8", "replace"))
            key = (form.get("key") or [""])[-1].strip()
            viewer: Viewer | None = self._source.verify(key) if key else None
            if viewer is not None and viewer.admin:
                return _redirect("/ui", cookie=self._sessions.start(viewer))
            return _html(self._pages.login("That key is not a valid admin key."), status=401)
        if not self._source.auth_enabled:
            return _redirect("/ui")
        return _html(self._pages.login(None))


def _html(body: str, status: int = 200) -> Response:
    return Response(status, body.encode(), headers=list(_PAGE_HEADERS),
                    content_type="text/html; charset=utf-8")


def _redirect(to: str, cookie: str | None = None) -> Response:
    headers = [("location", to), ("cache-control", "no-store")]
    if cookie is not None:
        headers.append(("set-cookie", cookie))
    return Response(303, b"", headers=headers, content_type="text/plain")


def _same_origin(req: Request) -> None:
    """Refuse a form posted from another site (browsers send Origin on POST)."""
    origin = req.header("origin")
    host = req.header("host")
    if origin and origin != "null" and host and urlsplit(origin).netloc != host:
        raise PermissionDenied("Cross-site form posts are refused.")

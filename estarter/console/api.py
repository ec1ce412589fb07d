"""The console's HTTP surface (Starlette): pages, a JSON API, SSE streams, /metrics.

Every route states what it needs (``_guard``): a reader (operator token or
session), a writer (the same, plus the CSRF rules of ``auth``), or the metrics
token. Backend calls block (they are Ray calls), so they run in worker threads.
Everything an app controls reaches the browser as JSON and is put on the page
with ``textContent`` by ``static/console.js``; no HTML is ever built from app text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import permissions as perm_names
from ..errors import EstarterError, NotFound
from ..packaging import PACKAGE_SUFFIXES
from . import prom
from .auth import CSRF_HEADER, SAFE_METHODS, Gate, Session, bearer, same_origin
from .backend import Backend, uptime
from .hub import Hub

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 64 * 1024 * 1024
KEEPALIVE_SECONDS = 15.0
_APP_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def static_dir() -> Path:
    return Path(str(resources.files("estarter.console") / "static"))


class Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Console:
    """The ASGI app and what its routes share. ``bind_host`` is the address the
    server listens on: on a loopback address, requests must name a loopback host
    (a page that rebinds its own name to 127.0.0.1 gets nothing)."""

    def __init__(self, backend: Backend, gate: Gate, bind_host: str = "127.0.0.1",
                 port: int = 0, hub: Hub | None = None) -> None:
        self.backend = backend
        self.gate = gate
        self.hub = hub or Hub(backend)
        self.loopback_only = bind_host in LOOPBACK_HOSTS
        self.cookie = f"estarter_session_{port}"  # cookies are per host, not per port
        routes = [
            Route("/", self.index), Route("/app/{app_id}", self.index),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/healthz", self.healthz),
            Route("/metrics", self.metrics),
            Route("/api/session", self.session_info),
            Route("/api/apps", self.apps),
            Route("/api/apps/{app_id}", self.app_detail),
            Route("/api/apps/{app_id}/logs", self.app_logs),
            Route("/api/apps/{app_id}/{action}", self.app_action, methods=["POST"]),
            Route("/api/apps/{app_id}/permissions/{perm}/{action}", self.permission_action,
                  methods=["POST"]),
            Route("/api/pending", self.pending),
            Route("/api/notifications", self.notifications),
            Route("/api/install", self.install, methods=["POST"]),
            Route("/api/events", self.events),
            Mount("/static", StaticFiles(directory=static_dir()), name="static"),
        ]
        self.app: ASGIApp = _Headers(Starlette(
            routes=routes, lifespan=self._lifespan, max_body_size=MAX_UPLOAD_BYTES + 65536,
            exception_handlers={NotFoundInRoute: _not_found}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await to_thread.run_sync(self.hub.close)

    # -- who is asking ---------------------------------------------------------

    def _guard(self, request: Request, write: bool = False, metrics: bool = False
               ) -> Session | None:
        """Raise Denied unless the caller may do this; the cookie session, if any."""
        host = request.headers.get("host", "")
        if self.loopback_only and _hostname(host) not in LOOPBACK_HOSTS:
            raise Denied(403, "this console answers on its loopback address only")
        if write and request.method in SAFE_METHODS:
            raise Denied(405, "state changes need POST")
        origin = request.headers.get("origin")
        if write and origin is not None and not same_origin(origin, host):
            raise Denied(403, "cross-origin request refused")
        token = bearer(request.headers.get("authorization"))
        if token is not None:
            if self.gate.is_operator_token(token):
                return None
            if metrics and self.gate.is_metrics_token(token):
                return None
            raise Denied(401, "bad token")
        session = self.gate.session(request.cookies.get(self.cookie))
        if session is None:
            raise Denied(401, "log in first (operator token)")
        if write:
            if origin is None and request.headers.get("sec-fetch-site") not in (
                    None, "same-origin"):
                raise Denied(403, "cross-site request refused")
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent or sent != session.csrf:
                raise Denied(403, "missing or wrong CSRF token")
        return session

    # -- pages -----------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        try:
            self._guard(request)
        except Denied as exc:
            if exc.status == 401:
                return RedirectResponse("/login", status_code=303)
            return _error(exc.status, str(exc))
        return FileResponse(static_dir() / "index.html", media_type="text/html")

    async def login_page(self, request: Request) -> Response:
        return FileResponse(static_dir() / "login.html", media_type="text/html")

    async def login(self, request: Request) -> Response:
        host = request.headers.get("host", "")
        if self.loopback_only and _hostname(host) not in LOOPBACK_HOSTS:
            return _error(403, "this console answers on its loopback address only")
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, host):
            return _error(403, "cross-origin request refused")
        form = await request.form(max_files=0, max_fields=4, max_part_size=4096)
        token = form.get("token")
        session = self.gate.login(token.strip() if isinstance(token, str) else None)
        if session is None:
            return RedirectResponse("/login?failed=1", status_code=303)
        out = RedirectResponse("/", status_code=303)
        out.set_cookie(self.cookie, session.sid, httponly=True, samesite="strict",
                       secure=request.url.scheme == "https", path="/",
                       max_age=12 * 3600)
        return out

    async def logout(self, request: Request) -> Response:
        try:
            self._guard(request, write=True)
        except Denied as exc:
            return _error(exc.status, str(exc))
        self.gate.logout(request.cookies.get(self.cookie))
        out = JSONResponse({"ok": True})
        out.delete_cookie(self.cookie, path="/")
        return out

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    # -- reading ---------------------------------------------------------------

    async def session_info(self, request: Request) -> Response:
        return await self._run(request, False, lambda s: {"csrf": s.csrf if s else None})

    async def apps(self, request: Request) -> Response:
        return await self._run(request, False, lambda _: _rows(self.backend.apps()))

    async def app_detail(self, request: Request) -> Response:
        app_id = _app_id(request)
        return await self._run(request, False, lambda _: self.backend.app(app_id))

    async def app_logs(self, request: Request) -> Response:
        app_id = _app_id(request)
        n = _int(request.query_params.get("lines"), 200, 1, 5000)
        return await self._run(request, False, lambda _: self.backend.logs(app_id, n))

    async def pending(self, request: Request) -> Response:
        return await self._run(request, False, lambda _: self.backend.pending())

    async def notifications(self, request: Request) -> Response:
        n = _int(request.query_params.get("limit"), 100, 1, 1000)
        return await self._run(request, False, lambda _: self.backend.notifications(n))

    async def metrics(self, request: Request) -> Response:
        try:
            self._guard(request, metrics=True)
        except Denied as exc:
            return _error(exc.status, str(exc))

        def body() -> bytes:
            return prom.render(self.backend.apps(), self.backend.pending())

        try:
            text = await to_thread.run_sync(body)
        except EstarterError as exc:
            return _error(503, str(exc))
        return Response(text, media_type=prom.CONTENT_TYPE)

    # -- changing --------------------------------------------------------------

    async def app_action(self, request: Request) -> Response:
        app_id, action = _app_id(request), request.path_params["action"]
        def uninstall() -> dict[str, Any]:
            self.backend.uninstall(app_id)
            return {"uninstalled": app_id}

        actions: dict[str, Callable[[], Any]] = {
            "launch": lambda: self.backend.launch(app_id),
            "stop": lambda: self.backend.stop(app_id),
            "restart": lambda: self.backend.restart(app_id),
            "uninstall": uninstall,
        }
        if action not in actions:
            return _error(404, "no such action")
        return await self._run(request, True, lambda _: actions[action]())

    async def permission_action(self, request: Request) -> Response:
        app_id, action = _app_id(request), request.path_params["action"]
        name = request.path_params["perm"]
        try:
            (perm,) = perm_names.normalize(name)
        except ValueError:
            return _error(400, "unknown permission, or a bundle")
        actions: dict[str, Callable[[], Any]] = {
            "grant": lambda: {"granted": self.backend.grant(app_id, perm)},
            "revoke": lambda: {"granted": self.backend.revoke(app_id, perm)},
            "deny": lambda: {"denied": self.backend.deny(app_id, perm)},
        }
        if action not in actions:
            return _error(404, "no such action")
        return await self._run(request, True, lambda _: actions[action]())

    async def install(self, request: Request) -> Response:
        try:
            self._guard(request, write=True)
        except Denied as exc:
            return _error(exc.status, str(exc))
        size = _int(request.headers.get("content-length"), -1, -1, 1 << 62)
        if size < 0 or size > MAX_UPLOAD_BYTES:
            return _error(413, f"upload a package of at most {MAX_UPLOAD_BYTES >> 20} MiB")
        form = await request.form(max_files=1, max_fields=2, max_part_size=1024)
        upload = form.get("package")
        if not isinstance(upload, UploadFile):
            return _error(400, "no package in the form (field 'package')")
        filename = upload.filename or ""
        suffix = next((s for s in PACKAGE_SUFFIXES if filename.lower().endswith(s)), None)
        if suffix is None:
            return _error(400, "a package is a .app.zip or .eapp file")
        folder = Path(tempfile.mkdtemp(prefix="estarter-upload-"))
        try:
            target = folder / f"upload{suffix}"  # never the client's name
            with open(target, "wb") as fh:
                written = 0
                while chunk := await upload.read(1 << 20):
                    written += len(chunk)
                    if written > MAX_UPLOAD_BYTES:
                        return _error(413, "package too large")
                    fh.write(chunk)
            try:
                row = await to_thread.run_sync(self.backend.install, target)
            except EstarterError as exc:
                return _error(400, f"refused: {_clean(str(exc), folder)}")
            return JSONResponse(row)
        finally:
            await upload.close()
            shutil.rmtree(folder, ignore_errors=True)

    # -- live ------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        try:
            self._guard(request)
        except Denied as exc:
            return _error(exc.status, str(exc))
        app_id = request.query_params.get("app")
        if app_id is not None and not _APP_ID.match(app_id):
            return _error(400, "bad app id")
        sub = self.hub.subscribe(app_id)

        async def stream() -> AsyncIterator[bytes]:
            import asyncio

            try:
                yield b"retry: 1000\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    if item is None:
                        return
                    yield f"data: {json.dumps(_sse_item(item))}\n\n".encode()
            finally:
                self.hub.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    # -- plumbing --------------------------------------------------------------

    async def _run(self, request: Request, write: bool,
                   fn: Callable[[Session | None], Any]) -> Response:
        try:
            session = self._guard(request, write=write)
        except Denied as exc:
            return _error(exc.status, str(exc))
        try:
            result = await to_thread.run_sync(fn, session)
        except NotFound as exc:
            return _error(404, str(exc))
        except EstarterError as exc:
            return _error(400, str(exc))
        return JSONResponse(result)


class _Headers:
    """Security headers on every answer (the CSP allows our own files only, so an
    injected ``<script>`` would not run even if one were ever put on a page)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()),
                            (b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"),
                            # not no-referrer: under it a browser sends
                            # "Origin: null" with our own forms, which the CSRF
                            # check refuses; same-origin leaks nothing to others.
                            (b"referrer-policy", b"same-origin"),
                            (b"cache-control", b"no-store")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with)


def _sse_item(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("kind") == "apps":
        return {**item, "apps": _rows(item["apps"])}
    return item


def _rows(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "uptime": uptime(row)} for row in apps]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _app_id(request: Request) -> str:
    app_id = str(request.path_params["app_id"])
    if not _APP_ID.match(app_id):
        raise NotFoundInRoute(app_id)
    return app_id


class NotFoundInRoute(Exception):
    pass


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.rsplit(":", 1)[0].lower() if ":" in host else host.lower()


def _int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(text))) if text is not None else default
    except ValueError:
        return default


def _clean(message: str, folder: Path) -> str:
    """The refusal without our temp folder's path in it."""
    return message.replace(str(folder) + "/", "").replace(str(folder), "")


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, "bad app id")


"""The web view's ASGI app: pages (Jinja2, autoescaped) and the JSON API under /api/ that they use.

Every page embeds its data as JSON in a ``<script type="application/json">`` block (read with JSON.parse, so a
name or message can never become markup or code) and the scripts fetch the rest from /api/. Changes (tag, untag,
delete, prune) exist only with ``allow_write``; each takes a plan first, then a confirmation, and every change
carries the CSRF token the pages were served with.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .._core.info import human_bytes
from ..errors import CheckpointNotFound, CkptError, UsageError
from ..store import Store
from . import actions, data

HERE = Path(__file__).parent
CSRF_HEADER = "x-csrf-token"
REFRESH_SECONDS = 2.0  # how stale the view of other processes' saves may get


def _fmt_time(ts: float | None) -> str:
    import datetime as dt

    return "" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_metric(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    # `pretty` is for showing JSON as text (autoescaped like any text); Jinja's `tojson` is only for the page-data
    # block, where its \u003c escapes keep a value from closing the script element.
    env.filters.update(bytes=lambda n: "" if n is None else human_bytes(n), time=_fmt_time, metric=_fmt_metric,
                       pretty=lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False, default=str))
    return env


class _Backend:
    """The one Store the app serves, used by one thread at a time (its index connection is not for sharing),
    brought up to date with other processes' saves, tags and deletes every REFRESH_SECONDS: by a thread of its
    own once `start_refresher` runs (the server), else by the first request after that time (tests)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.refreshed = time.monotonic()
        self.deleted_names: dict[str, str] = {}  # deletion records never change: read each once
        self.stopping: threading.Event | None = None
        self.totals = data.ByteTotals()

    def _refresh(self) -> None:
        try:
            self.store.refresh()
        except (CkptError, OSError):
            pass  # a store busy committing, or read-only: serve what the index says
        self.refreshed = time.monotonic()

    def start_refresher(self) -> threading.Event:
        """Refresh in the background, so that no request pays for it (a directory listing per 1,000 checkpoints
        costs tens of milliseconds). Set the returned event to stop."""
        self.stopping = threading.Event()

        def loop(stop: threading.Event) -> None:
            while not stop.wait(REFRESH_SECONDS):
                with self.lock:
                    self._refresh()

        threading.Thread(target=loop, args=(self.stopping,), name="ckpt-ui-refresh", daemon=True).start()
        return self.stopping

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        def locked() -> Any:
            with self.lock:
                if self.stopping is None and time.monotonic() - self.refreshed > REFRESH_SECONDS:
                    self._refresh()
                return fn(*args)

        return await run_in_threadpool(locked)

    def deleted(self, run: str) -> list:
        found = self.store.deleted(known=self.deleted_names)
        self.deleted_names.update({d.id: d.name for d in found})
        return [d for d in found if d.run == run]


# Scripts only from this server (never inline: page data travels as JSON, not code); nothing framed or fetched
# from elsewhere, so the view works with no network and a canary in a name cannot load or run anything.
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 b"img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class _SecurityHeaders:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(exc: Exception, status: int | None = None) -> JSONResponse:
    if isinstance(exc, CkptError):
        code = status or (404 if isinstance(exc, CheckpointNotFound) else 400 if isinstance(exc, UsageError) else 500)
        return JSONResponse({"error": exc.message, "hint": exc.hint, "type": type(exc).__name__}, status_code=code)
    return JSONResponse({"error": str(exc)}, status_code=status or 500)


def create_app(store: Store, *, allow_write: bool = False, allowed_hosts: list[str] | None = None,
               csrf_token: str | None = None) -> Starlette:
    """The web view of `store`. `allowed_hosts`: Host headers accepted (a page on another site that resolves its
    name to 127.0.0.1 must not read the store through the user's browser); None accepts any."""
    backend = _Backend(store)
    token = csrf_token or secrets.token_urlsafe(32)
    templates = Jinja2Templates(env=_env())

    def page(request: Request, template: str, title: str, payload: dict[str, Any], status: int = 200) -> Response:
        context = {"request": request, "title": title, "data": payload, "allow_write": allow_write,
                   "csrf_token": token, "store_url": store.url}
        return templates.TemplateResponse(request, template, context, status_code=status)

    def not_found(request: Request, exc: CkptError) -> Response:
        return page(request, "error.html", "Not found", {"error": exc.message, "hint": exc.hint}, status=404)

    # -- pages --------------------------------------------------------------------------------------------------
    async def runs_page(request: Request) -> Response:
        return page(request, "runs.html", "Runs", await backend.call(data.runs, store, backend.totals))

    async def run_page(request: Request) -> Response:
        run = request.path_params["run"]
        try:
            payload = await backend.call(lambda: data.run(store, run, backend.deleted(run)))
        except CkptError as exc:
            return not_found(request, exc)
        return page(request, "run.html", run, payload)

    async def checkpoint_page(request: Request) -> Response:
        ref = request.path_params["ref"]
        try:
            payload = await backend.call(data.checkpoint, store, ref)
        except CkptError as exc:
            return not_found(request, exc)
        return page(request, "checkpoint.html", payload["name"], payload)

    async def diff_page(request: Request) -> Response:
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        names = await backend.call(lambda: sorted(c.name for c in store.list()))
        return page(request, "diff.html", "Diff", {"a": a, "b": b, "names": names})

    async def store_page(request: Request) -> Response:
        return page(request, "store.html", "Store", await backend.call(data.store_summary, store, backend.totals))

    # -- API ----------------------------------------------------------------------------------------------------
    def api(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await backend.call(fn, request))
            except CkptError as exc:
                return _error(exc)

        return endpoint

    def api_diff(request: Request) -> Any:
        a, b = request.query_params.get("a"), request.query_params.get("b")
        if not a or not b:
            from ..errors import InvalidArgument

            raise InvalidArgument("A diff needs two checkpoints, a and b.", hint="GET /api/diff?a=RUN/step-1&b=RUN:latest")
        return data.diff(store, a, b)

    async def api_write(request: Request) -> Response:
        action = request.path_params["action"]
        if not allow_write:
            return JSONResponse({"error": "This web view is read-only.",
                                 "hint": "Restart it with 'ckpt ui --allow-write' to tag, untag, delete and prune."},
                                status_code=403)
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), token.encode()):
            return JSONResponse({"error": "Missing or wrong CSRF token.", "hint": "Reload the page and try again."},
                                status_code=403)
        if action not in actions.ACTIONS:
            return JSONResponse({"error": f"Unknown action {action!r}."}, status_code=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "The request body must be a JSON object."}, status_code=400)
        try:
            if body.get("confirm") is True:
                return JSONResponse(await backend.call(actions.act, store, action, body))
            return JSONResponse(await backend.call(actions.plan, store, action, body))
        except actions.PlanChanged as exc:
            return JSONResponse({"error": "The plan changed since it was shown; review it again.",
                                 "summary": str(exc)}, status_code=409)
        except CkptError as exc:
            return _error(exc)

    routes = [
        Route("/", runs_page),
        Route("/runs/{run}", run_page),
        Route("/c/{ref:path}", checkpoint_page),
        Route("/diff", diff_page),
        Route("/store", store_page),
        Route("/api/runs", api(lambda r: data.runs(store, backend.totals))),
        Route("/api/runs/{run}", api(lambda r: data.run(store, r.path_params["run"],
                                                         backend.deleted(r.path_params["run"])))),
        Route("/api/checkpoints/{ref:path}", api(lambda r: data.checkpoint(store, r.path_params["ref"]))),
        Route("/api/diff", api(api_diff)),
        Route("/api/store", api(lambda r: data.store_summary(store, backend.totals))),
        Route("/api/store/gc", api(lambda r: data.gc_estimate(store))),
        Route("/api/store/packing", api(lambda r: data.packing_savings(store))),
        Route("/api/write/{action}", api_write, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(_SecurityHeaders)]
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.csrf_token = token
    app.state.start_refresher = backend.start_refresher
    app.state.allow_write = allow_write
    return app

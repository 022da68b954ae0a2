"""create_app(settings, database_url) -> Starlette: routes, auth, lifespan (pool, writer, keys)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.basic import BasicAuth
from app.auth.keys import KeyCache
from app.errors import HANDLERS, REALM_HEADER, ApiError, Unauthorized, error_response
from app.ingest.socket import Hub
from app.ingest.writer import Writer
from app.query.routes import EXPORTS_AT_ONCE
from app.query.routes import routes as query_routes
from app.resources import CLIENT, DASHBOARD, EXAMPLES
from app.server_limits import tune_gc
from app.settings import Settings
from app.storage import db, failures, rollups, session_store, timescale
from app.webhook import Sender

log = logging.getLogger("vidmetrics")
SESSIONS = Gauge("vidmetrics_sessions_active", "Channels (viewing sessions) open now")
POOL_IN_USE = Gauge("vidmetrics_db_pool_in_use", "Database connections checked out")
TASKS = Gauge("vidmetrics_asyncio_tasks", "asyncio tasks alive in this process")
PUBLIC_PATHS = ("/api/v1/openapi.json",)


class AuthMiddleware:
    """Basic auth on /api and /metrics; the socket, the example page and health stay open."""

    def __init__(self, app: ASGIApp, auth: BasicAuth | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            self.auth is not None
            and scope["type"] == "http"
            and path.startswith(("/api/", "/metrics", "/dashboard"))
            and path not in PUBLIC_PATHS
        ):
            header = None
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    header = value.decode("latin-1")
                    break
            try:
                await self.auth.check(header)
            except ApiError as exc:
                headers = REALM_HEADER if isinstance(exc, Unauthorized) else {"Retry-After": "1"}
                await error_response(exc.status, exc.message, headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


NOSNIFF = (b"x-content-type-options", b"nosniff")


class NoSniff:
    """Every HTTP answer says `X-Content-Type-Options: nosniff`: a browser takes each
    response as the type it is sent as (a JSON error is never run as a script)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == NOSNIFF[0] for name, _ in headers):
                    headers.append(NOSNIFF)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


# The dashboard loads only its own files and runs no inline code: nothing else may run,
# load, connect or frame it.
DASHBOARD_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DASHBOARD_HEADERS = {
    "Content-Security-Policy": DASHBOARD_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def example_policy(nonce: str) -> str:
    """The example page's own inline module and style run (by nonce); the client module,
    the socket and the media come from this server."""
    return (
        f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; "
        f"style-src 'self' 'nonce-{nonce}'; img-src 'self' data:; media-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'self'"
    )


def _sync(work: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        work()

    return run


async def _every(seconds: float, work: Callable[[], Awaitable[Any]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            with failures.translated():
                await work()
        except failures.StorageError as exc:
            log.debug("%s failed: %s", name, exc)


def example_page(request: Request) -> Response:
    key = request.query_params.get("key") or request.app.state.example_key or ""
    # a JS string literal that cannot close the <script> element (the key may be user text)
    literal = orjson.dumps(key[:200]).decode().replace("<", "\\u003c").replace(">", "\\u003e")
    nonce = secrets.token_urlsafe(18)
    html = (
        (EXAMPLES / "index.html")
        .read_text()
        .replace('"{{KEY}}"', literal)
        .replace("{{NONCE}}", nonce)
    )
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": example_policy(nonce),
            "Referrer-Policy": "same-origin",
        },
    )


def example_static(request: Request) -> Response:
    name = request.path_params["name"]
    path = (EXAMPLES / "static" / name).resolve()
    if path.parent != (EXAMPLES / "static").resolve() or not path.is_file():
        return error_response(404, f"no file {name[:60]}")
    return FileResponse(path)  # honours Range requests, so browsers can seek


DASHBOARD_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}


def dashboard(request: Request) -> Response:
    """The dashboard's page and its static files (no CDN: everything comes from here)."""
    name = request.path_params.get("path") or "index.html"
    path = (DASHBOARD / name).resolve()
    suffix = path.suffix if path.suffix else path.name
    if (
        not path.is_relative_to(DASHBOARD.resolve())
        or not path.is_file()
        or suffix not in DASHBOARD_TYPES
    ):
        return error_response(404, f"no file {name[:60]}")
    # the page is always fresh; its modules are revalidated (they change with releases)
    cache = "no-cache" if name == "index.html" else "public, max-age=300, must-revalidate"
    return FileResponse(
        path,
        media_type=DASHBOARD_TYPES[suffix],
        headers={"Cache-Control": cache, **DASHBOARD_HEADERS},
    )


def client(request: Request) -> Response:
    """The first-party browser client, an ES module: public (pages load it), readable from
    any origin (a module script from another origin needs CORS), revalidated hourly."""
    return FileResponse(
        CLIENT,
        media_type="text/javascript; charset=utf-8",
        headers={
            "Cache-Control": "public, max-age=3600, must-revalidate",
            "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin",
        },
    )


async def health(request: Request) -> Response:
    """200 when the database answers and the writer commits; else 503 naming which part
    fails, so a load balancer takes this process out while it cannot acknowledge events."""
    database = "ok"
    try:
        with failures.translated():
            await db.ping(request.app.state.pool, timeout=2)
    except failures.StorageError:
        database = "unavailable"
    writer = "ok" if request.app.state.hub.writer.healthy else "failing"
    ok = database == "ok" and writer == "ok"
    body = {"status": "ok" if ok else "unavailable", "database": database, "writer": writer}
    if not ok:
        body["error"] = "database unavailable" if database != "ok" else "writes are failing"
    return Response(
        orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json"
    )


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class Services:
    """What one server process runs beside its routes: the two pools (the writer's, and
    the questions' own few connections), the key cache, the writer, the export webhook and
    the periodic tasks. Started by the app's lifespan, stopped in order."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.url = database_url
        self.tasks: list[asyncio.Task[None]] = []
        self.sender: Sender | None = None

    async def start(self, app: Starlette) -> Hub:
        settings = self.settings
        # each process writes its own rollup rows (a pair of shards), so --workers do not
        # queue on the same rows' locks
        shards = rollups.shard_pair()
        self.pool = pool = await db.create_pool(
            self.url, min_size=2, max_size=settings.db_pool_size, shard=shards[0]
        )
        # questions have their own few connections: the writer's are never theirs
        self.query_pool = await db.create_pool(
            self.url,
            min_size=1,
            max_size=settings.query_pool_size,
            statement_seconds=settings.query_timeout_seconds,
        )
        backend = await db.backend_of(pool)
        if backend.has_policies:
            async with pool.acquire() as conn:
                await timescale.apply_policies(conn, settings)
        self.keys = KeyCache(pool, settings.key_refresh_seconds)
        await self.keys.start()
        self.writer = Writer(
            pool,
            flush_interval=settings.flush_interval_ms / 1000,
            max_rows=settings.flush_max_rows,
            outbox=bool(settings.export_webhook),
            shards=shards,
        )
        self.writer.start()
        tune_gc()
        if settings.export_webhook:
            self.sender = Sender(pool, settings.export_webhook, batch=settings.export_webhook_batch)
            self.sender.start()
        self.hub = hub = Hub(settings, self.writer, self.keys)
        SESSIONS.set_function(lambda: sum(len(c.channels) for c in hub.sockets))
        POOL_IN_USE.set_function(lambda: pool.get_size() - pool.get_idle_size())
        loop = asyncio.get_running_loop()
        TASKS.set_function(lambda: len(asyncio.all_tasks(loop)))
        app.state.pool, app.state.query_pool, app.state.hub = pool, self.query_pool, hub
        app.state.keys = self.keys  # the ingest-key cache: a service of its own
        app.state.backend = backend
        self.tasks = self._periodic(backend.has_policies)
        return hub

    def _periodic(self, engine_retention: bool) -> list[asyncio.Task[None]]:
        settings, pool, hub = self.settings, self.pool, self.hub

        def every(seconds: float, work: Callable[[], Awaitable[Any]], name: str) -> Any:
            return asyncio.create_task(_every(seconds, work, name))

        return [
            every(
                settings.watching_ttl_seconds / 3,
                lambda: session_store.touch_playing(pool, list(hub.presence.playing)),
                "presence refresh",
            ),
            # revoked keys close their open channels; silent sockets are reaped
            every(min(0.5, settings.key_refresh_seconds), _sync(hub.sweep), "socket sweep"),
            # raw events live in the session rows: no engine policy can drop them alone;
            # on plain PostgreSQL the server also stands in for the retention policies
            every(
                3600,
                lambda: session_store.drop_raw_events(pool, settings.raw_events_retention_days),
                "raw event retention",
            )
            if engine_retention
            else every(
                3600,
                lambda: session_store.apply_retention(
                    pool, settings.retention_days, settings.raw_events_retention_days
                ),
                "retention",
            ),
        ]

    async def stop(self) -> None:
        """1. refuse new sockets; 2. close the open ones (their sessions end now);
        3. flush every queued write; 4. close the pools."""
        hub = self.hub
        hub.accepting = False
        for conn in list(hub.sockets):
            conn.close(1001)
        for task in list(hub.waiting):
            task.cancel()
        await self.writer.stop()
        if self.sender is not None:
            await self.sender.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.keys.stop()
        await self.query_pool.close()
        await self.pool.close()


def create_app(settings: Settings, database_url: str, example_key: str | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Hub]]:
        services = Services(settings, database_url)
        hub = await services.start(app)
        try:
            yield {"hub": hub}  # uvicorn hands it to the websockets (SocketProtocol)
        finally:
            await services.stop()

    app = Starlette(
        routes=[
            Route("/", example_page),
            Route("/static/{name}", example_static),
            Route("/healthz", health),
            Route("/client/vidmetrics.js", client),
            Route("/dashboard", dashboard),
            Route("/dashboard/{path:path}", dashboard),
            Route("/metrics", metrics),
            *query_routes,
        ],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.export_slots = asyncio.Semaphore(EXPORTS_AT_ONCE)
    app.state.example_key = example_key
    auth = None
    if settings.auth_enabled:
        auth = BasicAuth(
            settings.user, settings.password, settings.password_hash, settings.max_password_checks
        )
    app.add_middleware(AuthMiddleware, auth=auth)
    app.add_middleware(NoSniff)  # outermost: auth refusals say it too
    return app

"""The REST endpoints: parse (params), ask (storage.stats), shape (shapes). No SQL here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.auth.keys import generate_key
from app.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    QueryTimeout,
    RequestTimeout,
    ServiceBusy,
    TooManyRequests,
    UnsupportedMediaType,
)
from app.model.query import BucketQuery
from app.model.storable import UnsafeValue, check_json
from app.query import exporting, params, shapes
from app.query.openapi import KEY_PATTERN, document
from app.storage import db, failures, key_store, stats, summaries

MAX_KEY_LENGTH = 200
_KEY = re.compile(KEY_PATTERN)
# answers with more rows than this are shaped and encoded in a thread, off the event loop
OFF_LOOP_ROWS = 2000


def json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def json_off_loop(rows: int, build: Callable[[], Any]) -> Response:
    """Shape and encode a large answer in a thread so other requests keep being served."""
    if rows <= OFF_LOOP_ROWS:
        return json(build())
    body = await asyncio.to_thread(lambda: orjson.dumps(build()))
    return Response(body, media_type="application/json")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: Request) -> dict[str, Any]:
    """The JSON body (POST, or GET as Postman sends it), else the query-string fields.

    A POST that carries a body must say it is JSON: a foreign page's <form> can only send
    form or text/plain bodies, so this refuses cross-site requests that ride on a browser's
    cached credentials."""
    settings = request.app.state.settings
    limit = settings.max_body_bytes
    content_type = request.headers.get("content-type")
    declared = request.headers.get("content-length")
    if request.method == "POST" and content_type is not None and not _is_json(content_type):
        raise UnsupportedMediaType("request body must be application/json")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.request_timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout("request body did not arrive in time") from None
    raw = b"".join(chunks)
    if raw.strip():
        if request.method == "POST" and content_type is None:
            raise UnsupportedMediaType("request body must be application/json")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
    else:
        body = params.from_query_string(dict(request.query_params))
    try:
        check_json("request", body)
    except UnsafeValue as exc:
        raise BadRequest(str(exc)) from None
    return dict(body)


async def read_command(request: Request) -> dict[str, Any]:
    """The JSON body of a request that changes state (creating a key). It must be sent as
    `Content-Type: application/json`, which a page on another origin cannot send without a
    CORS preflight this server never grants (a `fetch` in no-cors mode, `sendBeacon` or a
    `<form>` can only send form, multipart or text/plain bodies, or none); an empty body is
    `{}`. The query string is never read: a URL alone changes nothing."""
    if not _is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType(
            "a request that changes state must send a JSON body with Content-Type: application/json"
        )
    if request.query_params:
        raise BadRequest(
            "query-string parameters are not read by this request; send its fields in the JSON body"
        )
    return await read_body(request)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


UNAVAILABLE = "the database is unavailable; retry in a moment"
QUERY_SECONDS = Histogram(
    "vidmetrics_query_seconds", "Database time of a query API answer", ["endpoint"]
)


@contextlib.asynccontextmanager
async def query_connection(request: Request) -> AsyncIterator[db.Connection]:
    """A connection of the query pool (never the writer's): a question that finds all of
    them busy for METRICS_QUERY_QUEUE_SECONDS is answered 503, one whose statement runs
    past METRICS_QUERY_TIMEOUT_SECONDS is cancelled by PostgreSQL and answered 504."""
    settings = request.app.state.settings
    try:
        conn = await request.app.state.query_pool.acquire(timeout=settings.query_queue_seconds)
    except TimeoutError:
        raise ServiceBusy(
            f"busy: {settings.query_pool_size} questions are being answered "
            f"(METRICS_QUERY_POOL_SIZE); retry in a moment"
        ) from None
    except Exception as exc:  # a new connection could not be opened
        if isinstance(failures.translate(exc), failures.Unavailable):
            raise ServiceBusy(UNAVAILABLE) from exc
        raise
    try:
        with failures.translated(timeouts=failures.OverBudget):
            yield conn
    except failures.OverBudget:  # the server's cancel, or our deadline
        raise QueryTimeout(
            f"the question took longer than its budget of "
            f"{settings.query_timeout_seconds:g} s "
            "(METRICS_QUERY_TIMEOUT_SECONDS); ask for a shorter timeframe "
            "or fewer videos"
        ) from None
    finally:
        await request.app.state.query_pool.release(conn)


async def _run(request: Request, work: Callable[[db.Connection], Awaitable[Any]]) -> Any:
    """Run storage work on a query connection; map database refusals to clear answers."""
    started = time.perf_counter()
    endpoint = request.url.path.removeprefix("/api/v1/").split("/")[0]
    try:
        async with query_connection(request) as conn:
            result = await work(conn)
        if endpoint in QUERY_ENDPOINTS:  # a fixed set of label values
            QUERY_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        return result
    except failures.QueryRefused as exc:  # e.g. a zone PostgreSQL does not know
        raise BadRequest(str(exc)) from exc
    except failures.ValueRefused as exc:
        raise BadRequest("a value is out of range for this query") from exc
    except failures.Unavailable as exc:
        raise ServiceBusy(UNAVAILABLE) from exc


def _bucket_query(request: Request, body: dict[str, Any]) -> BucketQuery:
    settings = request.app.state.settings
    return params.bucket_query(body, _now(), settings.max_buckets, settings.retention_days)


def _retention(request: Request) -> int:
    return int(request.app.state.settings.retention_days)


async def plays(request: Request) -> Response:
    q = _bucket_query(request, await read_body(request))
    rows = await _run(request, lambda conn: stats.plays(conn, q))
    return await json_off_loop(len(rows), lambda: shapes.plays(rows))


async def sources(request: Request) -> Response:
    q = _bucket_query(request, await read_body(request))
    rows = await _run(request, lambda conn: stats.sources(conn, q))
    return await json_off_loop(len(rows), lambda: shapes.sources(rows))


async def completion(request: Request) -> Response:
    q = _bucket_query(request, await read_body(request))
    buckets = await _run(request, lambda conn: stats.completion(conn, q))
    return await json_off_loop(len(buckets), lambda: shapes.completion(buckets))


async def qoe(request: Request) -> Response:
    """Quality of experience per bucket, over the views whose client reports it."""
    body = await read_body(request)
    breakdown = params.parse_breakdown(body.get("breakdown"))
    # every view with QoE data, whatever it watched (an exit before start watched nothing)
    q = dataclasses.replace(_bucket_query(request, body), minimum_watch_seconds=0.0)
    buckets = await _run(request, lambda conn: stats.qoe(conn, q, breakdown=breakdown))
    return await json_off_loop(len(buckets), lambda: shapes.qoe(buckets, breakdown))


async def engagement(request: Request) -> Response:
    q = params.engagement_query(await read_body(request), _now(), _retention(request))
    (total, counts), sessions = await _run(request, lambda conn: stats.engagement_of(conn, q))
    return json(shapes.engagement(total, q.ranges, counts, sessions))


EXPORTS_AT_ONCE = 2


async def videos(request: Request) -> Response:
    """The selection's most viewed videos in the timeframe."""
    body = await read_body(request)
    q = _bucket_query(request, body)
    limit = params.parse_limit(body.get("limit"), 20, 100)
    rows = await _run(request, lambda conn: stats.videos(conn, q, limit))
    return json(shapes.videos(rows))


async def sessions(request: Request) -> Response:
    """Sessions newest first, one page at a time (`next` is the cursor of the next page)."""
    q = params.sessions_query(await read_body(request), _now(), _retention(request))
    more = dataclasses.replace(q, limit=q.limit + 1)  # one more: is there a next page?
    rows = await _run(request, lambda conn: summaries.page_of_sessions(conn, more))
    return json(shapes.sessions_page(rows, q.limit, q.slow_start_seconds))


async def one_session(request: Request) -> Response:
    raw = request.path_params["session"]
    number = params.parse_session_number(raw)
    found = await _run(request, lambda conn: summaries.one_session(conn, number))
    if found is None:
        raise NotFound(f"no session {raw}")
    return json(shapes.one_session(*found))


async def export(request: Request) -> Response:
    """Per-session summaries, streamed: one pooled connection and one batch in memory."""
    q = params.export_query(await read_body(request), _now(), _retention(request))
    try:
        exporting.encoder(q.format)  # an optional package may be missing: say so now
    except exporting.FormatUnavailable as exc:
        raise BadRequest(str(exc)) from None
    slots: asyncio.Semaphore = request.app.state.export_slots
    if slots.locked():
        raise TooManyRequests(f"at most {EXPORTS_AT_ONCE} exports run at once")
    await slots.acquire()

    async def body() -> AsyncIterator[bytes]:
        try:
            async with query_connection(request) as conn:
                batches = summaries.stream(conn, q.selection, q.window)
                async for chunk in exporting.encode(q.format, batches):
                    yield chunk
        finally:
            slots.release()

    extension = "ndjson" if q.format == "ndjson" else q.format
    return StreamingResponse(
        body(),
        media_type=exporting.MEDIA_TYPES[q.format],
        headers={"Content-Disposition": f'attachment; filename="vidmetrics-sessions.{extension}"'},
    )


async def watching(request: Request) -> Response:
    sel = params.parse_selection(await read_body(request))
    ttl = request.app.state.settings.watching_ttl_seconds
    count = await _run(request, lambda conn: stats.watching(conn, sel, ttl))
    return json(shapes.watching(count))


async def create_key(request: Request) -> Response:
    body = await read_command(request)
    custom = body.get("key")
    if custom is not None and (not isinstance(custom, str) or not _KEY.match(custom)):
        raise BadRequest(f"key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (no spaces)")
    key = custom or generate_key()
    try:
        row = await _run(request, lambda conn: key_store.insert_key(conn, key))
    except key_store.KeyExists:
        raise Conflict("key already exists") from None
    await request.app.state.keys.refresh()
    return json(shapes.key(row), 201)


async def list_keys(request: Request) -> Response:
    rows = await _run(request, key_store.list_keys)
    return json(shapes.keys(rows))


async def revoke_key(request: Request) -> Response:
    key = request.path_params["key"]  # already percent-decoded, exactly once
    if not await _run(request, lambda conn: key_store.revoke_key(conn, key)):
        raise NotFound(f"no key {key[:60]!r}")
    await request.app.state.keys.refresh()
    return json(shapes.message("Key revoked"))


async def openapi(request: Request) -> Response:
    return json(document())


async def keys(request: Request) -> Response:
    # one route for both methods, so a 405 names every allowed method
    return await (create_key(request) if request.method == "POST" else list_keys(request))


QUERY_METHODS = ["GET", "POST"]
QUERY_ENDPOINTS = frozenset(
    {
        "plays",
        "engagement",
        "sources",
        "watching",
        "keys",
        "videos",
        "sessions",
        "completion",
        "qoe",
    }
)
routes = [
    Route("/api/v1/plays", plays, methods=QUERY_METHODS),
    Route("/api/v1/engagement", engagement, methods=QUERY_METHODS),
    Route("/api/v1/completion", completion, methods=QUERY_METHODS),
    Route("/api/v1/sources", sources, methods=QUERY_METHODS),
    Route("/api/v1/qoe", qoe, methods=QUERY_METHODS),
    Route("/api/v1/watching", watching, methods=QUERY_METHODS),
    Route("/api/v1/export", export, methods=QUERY_METHODS),
    Route("/api/v1/videos", videos, methods=QUERY_METHODS),
    Route("/api/v1/sessions", sessions, methods=QUERY_METHODS),
    Route("/api/v1/sessions/{session}", one_session, methods=["GET"]),
    Route("/api/v1/keys", keys, methods=["GET", "POST"]),
    Route("/api/v1/keys/{key:path}", revoke_key, methods=["DELETE"]),
    Route("/api/v1/openapi.json", openapi, methods=["GET"]),
]

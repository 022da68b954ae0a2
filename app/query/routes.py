"""The REST endpoints: parse (params), ask (storage.stats), shape (shapes). No SQL here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth.keys import generate_key
from app.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from app.query import params, shapes
from app.query.openapi import document
from app.storage import keys as key_sql
from app.storage import stats

MAX_KEY_LENGTH = 200


def json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def read_body(request: Request) -> dict[str, Any]:
    """The JSON body (POST, or GET as Postman sends it), else the query-string fields."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if raw.strip():
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body
    return params.from_query_string(dict(request.query_params))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _run(request: Request, work: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    """Run storage work on a pooled connection; map database refusals to clear answers."""
    try:
        async with request.app.state.pool.acquire() as conn:
            return await work(conn)
    except asyncpg.InvalidParameterValueError as exc:  # e.g. a zone PostgreSQL does not know
        raise BadRequest(f"invalid parameter: {exc.args[0] if exc.args else exc}") from exc
    except asyncpg.DataError as exc:
        raise BadRequest("a value is out of range for this query") from exc


async def plays(request: Request) -> Response:
    q = params.bucket_query(await read_body(request), _now())
    ts = request.app.state.timescale
    rows = await _run(request, lambda conn: stats.plays(conn, q, ts))
    return json(shapes.plays(rows))


async def sources(request: Request) -> Response:
    q = params.bucket_query(await read_body(request), _now())
    ts = request.app.state.timescale
    rows = await _run(request, lambda conn: stats.sources(conn, q, ts))
    return json(shapes.sources(rows))


async def engagement(request: Request) -> Response:
    q = params.engagement_query(await read_body(request), _now())
    total, counts = await _run(request, lambda conn: stats.engagement(conn, q))
    return json(shapes.engagement(total, q.ranges, counts))


async def watching(request: Request) -> Response:
    sel = params.parse_selection(await read_body(request))
    ttl = request.app.state.settings.watching_ttl_seconds
    count = await _run(request, lambda conn: stats.watching(conn, sel, ttl))
    return json({"watching": count})


def _key_json(row: key_sql.KeyRow) -> dict[str, Any]:
    return {"key": row.key,
            "disabled_at": row.disabled_at.isoformat() if row.disabled_at else None}


async def create_key(request: Request) -> Response:
    body = await read_body(request)
    custom = body.get("key")
    if custom is not None:
        if not isinstance(custom, str) or not custom.strip() or len(custom) > MAX_KEY_LENGTH:
            raise BadRequest(f"key must be a non-empty string of at most {MAX_KEY_LENGTH} "
                             "characters")
        if any(c.isspace() or not c.isprintable() for c in custom):
            raise BadRequest("key must not contain spaces or control characters")
    key = custom or generate_key()
    try:
        row = await _run(request, lambda conn: key_sql.insert_key(conn, key))
    except key_sql.KeyExists:
        raise Conflict("key already exists") from None
    await request.app.state.hub.keys.refresh()
    return json(_key_json(row), 201)


async def list_keys(request: Request) -> Response:
    rows = await _run(request, key_sql.list_keys)
    return json({"keys": [_key_json(r) for r in rows]})


async def revoke_key(request: Request) -> Response:
    key = unquote(request.path_params["key"])
    if not await _run(request, lambda conn: key_sql.revoke_key(conn, key)):
        raise NotFound(f"no key {key[:60]!r}")
    await request.app.state.hub.keys.refresh()
    return json({"message": "Key revoked"})


async def openapi(request: Request) -> Response:
    return json(document())


QUERY_METHODS = ["GET", "POST"]
routes = [
    Route("/api/v1/plays", plays, methods=QUERY_METHODS),
    Route("/api/v1/engagement", engagement, methods=QUERY_METHODS),
    Route("/api/v1/sources", sources, methods=QUERY_METHODS),
    Route("/api/v1/watching", watching, methods=QUERY_METHODS),
    Route("/api/v1/keys", create_key, methods=["POST"]),
    Route("/api/v1/keys", list_keys, methods=["GET"]),
    Route("/api/v1/keys/{key:path}", revoke_key, methods=["DELETE"]),
    Route("/api/v1/openapi.json", openapi, methods=["GET"]),
]

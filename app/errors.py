"""The error tree and the one JSON error handler.

ApiError (status, message)        -> {"error": message} with that status
  BadRequest        400  a field is missing or malformed (the message names it)
  Unauthorized      401  missing or wrong credentials (+ WWW-Authenticate)
  NotFound          404
  MethodNotAllowed  405
  Conflict          409  the thing to create exists already
  RequestTimeout    408  the request body did not arrive in time
  PayloadTooLarge   413
  UnsupportedMediaType 415  a POST body that is not application/json
  TooManyRequests   429  (+ Retry-After)
  ServiceBusy       503  every query connection is busy (+ Retry-After)
  QueryTimeout      504  a question ran past its time budget
HTTPException (Starlette)         -> same envelope, its status
anything else                     -> 500 {"error": "internal server error"}, logged
"""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("vidmetrics.errors")


class ApiError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class Conflict(ApiError):
    status = 409


class RequestTimeout(ApiError):
    status = 408


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class TooManyRequests(ApiError):
    status = 429


class ServiceBusy(ApiError):
    status = 503


class QueryTimeout(ApiError):
    status = 504


REALM_HEADER = {"WWW-Authenticate": 'Basic realm="vidmetrics"'}
_STARLETTE_MESSAGES = {404: "not found", 405: "method not allowed"}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = REALM_HEADER if isinstance(exc, Unauthorized) else None
    if isinstance(exc, (TooManyRequests, ServiceBusy)):
        headers = {"Retry-After": "1"}
    return error_response(exc.status, exc.message, headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = _STARLETTE_MESSAGES.get(exc.status_code) or str(exc.detail).lower()
    if exc.status_code == 404:
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, message, dict(exc.headers or {}) or None)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error")


HANDLERS = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}

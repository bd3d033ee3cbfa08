"""The one table from domain errors to HTTP statuses, and the handlers that use it.

Every error response body is ``{"detail": "<message>", "request_id": "<id>"}`` (the id
is also in the ``X-Request-Id`` header and the access log line). Request bodies that
fail validation get 400 with the offending field named; malformed JSON gets 400.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import AdapterNotFound, EngineError, ModelLoadError, UserInputError
from ..errors import (
    AccessDenied,
    Gone,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    Overloaded,
    ServiceError,
    Unavailable,
)
from ..observability import REQUEST_ID_HEADER, request_id

__all__ = [
    "ERROR_RESPONSES",
    "STATUS_BY_ERROR",
    "install_error_handlers",
    "internal_error",
    "retry_after",
    "status_for",
]

log = logging.getLogger(__name__)

# Checked in order; the first class the error is an instance of wins.
STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidRequest, 400),
    (NotAuthenticated, 401),
    (AccessDenied, 403),
    (NotFound, 404),
    (Gone, 410),
    (Overloaded, 429),
    (Unavailable, 503),
    (ServiceError, 400),
    (UserInputError, 400),
    (AdapterNotFound, 404),
    (ModelLoadError, 500),
    (EngineError, 500),
)

_EXTRA_HEADERS: dict[int, dict[str, str]] = {429: {"Retry-After": "1"}}

_ERROR_BODY: dict[str, Any] = {
    "application/json": {
        "schema": {
            "type": "object",
            "title": "Error",
            "properties": {"detail": {"type": "string"}, "request_id": {"type": "string"}},
            "required": ["detail"],
        }
    }
}
# The error statuses any route may answer, for the OpenAPI document (one entry per route).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": _ERROR_BODY}
    for status, description in (
        (400, "the request is malformed or asks for something invalid; `detail` says what"),
        (401, "no API key, or one this server does not accept"),
        (403, "a signed link that is not (or no longer) valid, or a limit of the key"),
        (404, "no such thing, or it belongs to another tenant"),
        (410, "gone: an unloaded run or sampler, an expired or finished session"),
        (413, "the request body is over the size limit"),
        (421, "the Host header names no address this server answers on"),
        (429, "over a queue or rate limit; retry after `Retry-After` seconds"),
        (500, "internal server error; the server's log has the details"),
        (503, "the server or the base model is not available right now"),
    )
}


def retry_after(exc: BaseException) -> str:
    """The ``Retry-After`` of a 429: the seconds a rate limit names (1-60, what the
    clients' retry layers honour), else 1."""
    header = getattr(exc, "retry_after_header", None)
    return header if isinstance(header, str) else "1"


def internal_error(rid: str | None) -> str:
    """What a 500 says: a sentence and the request id, never the exception's text (it may
    name server paths); the server's log has the details under that id."""
    return f"internal server error (request id {rid or 'unknown'}); the server's log has the details"


def status_for(exc: BaseException) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def _error(request: Request, status: int, message: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": message}
    headers = {**_EXTRA_HEADERS.get(status, {}), **(headers or {})}
    rid = request_id(request)
    if rid is not None:
        # The header too: a 500 answered by the server error handler bypasses the middleware that adds it.
        body["request_id"] = headers[REQUEST_ID_HEADER] = rid
    return JSONResponse(body, status_code=status, headers=headers)


def _location(loc: Any) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for part in parts:
        if part.isdigit():
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "body"


def validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return f"malformed JSON body: {ctx.get('error', err.get('msg', 'cannot parse'))}"
    parts = []
    for err in errors[:5]:
        where = _location(err.get("loc", ()))
        message = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            parts.append(f"{where}: field required")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        else:
            parts.append(f"{where}: {message}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("request %s failed: %s: %s", request_id(request), type(exc).__name__, exc)
        headers = {"Retry-After": retry_after(exc)} if status == 429 else None
        if status == 500:  # engine failures: their text may hold server paths; it is in the log
            return _error(request, status, internal_error(request_id(request)), headers)
        return _error(request, status, str(exc) or type(exc).__name__, headers)

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _error(request, 400, validation_message(exc))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _error(request, exc.status_code, exc.detail, exc.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s: unhandled error", request_id(request), exc_info=exc)
        return _error(request, 500, internal_error(request_id(request)))

    app.add_exception_handler(ServiceError, domain_error)
    app.add_exception_handler(EngineError, domain_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)

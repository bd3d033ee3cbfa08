"""The OpenAI-compatible endpoints under ``/oai/api/v1``: completions, chat completions, models.

The API key is the Tinker one, sent as ``Authorization: Bearer <key>`` (the ``openai``
client) or ``X-API-Key``. Errors keep the statuses of the one error table
(:mod:`.errors`) but take the OpenAI body, ``{"error": {"message", "type", "param",
"code"}}``, which is what OpenAI clients read. Streams are server-sent events,
``data: <chunk>`` each, closed by ``data: [DONE]``; an error after the stream has
begun is sent as one last ``data: {"error": ...}`` event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute

from ..engine import EngineError
from ..errors import NotAuthenticated, ServiceError
from ..wire import oai as w
from .deps import RuntimeDep, remember_owner
from .errors import retry_after, status_for

__all__ = ["router"]

log = logging.getLogger(__name__)

PREFIX = "/oai/api/v1"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    410: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, param: str | None = None) -> w.ErrorBody:
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    if status == 404 and param == "model":
        code = "model_not_found"
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return w.ErrorBody(error=w.ErrorDetail(message=message, type=kind, param=param, code=code))


def _error_for(exc: Exception) -> tuple[int, w.ErrorBody]:
    if isinstance(exc, RequestValidationError):
        return 400, _validation_error(exc)
    status = status_for(exc)
    if status >= 500:
        log.error("OpenAI-compatible request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    if isinstance(exc, (ServiceError, EngineError)):
        return status, error_body(status, str(exc) or type(exc).__name__, getattr(exc, "param", None))
    return status, error_body(status, f"internal server error: {type(exc).__name__}: {exc}")


def _validation_error(exc: RequestValidationError) -> w.ErrorBody:
    err = exc.errors()[0]
    if err.get("type") == "json_invalid":
        return error_body(
            400, f"the request body is not valid JSON: {(err.get('ctx') or {}).get('error', 'cannot parse')}"
        )
    loc = [str(part) for part in err.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if err.get("type") == "missing":
        return error_body(400, f"missing required parameter {param!r}", param)
    return error_body(400, f"invalid value for {param!r}: {err.get('msg', 'invalid value')}", param)


class _OaiRoute(APIRoute):
    """Renders every error of these routes as an OpenAI error body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every error leaves as an OpenAI error body
                status, body = _error_for(exc)
                headers = {"Retry-After": retry_after(exc)} if status == 429 else None
                return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)

        return run


def require_oai_owner(
    request: Request,
    runtime: RuntimeDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    key = token.strip() if scheme.lower() == "bearer" and token.strip() else x_api_key
    if key is None or not key.strip():
        raise NotAuthenticated("missing API key: send it as 'Authorization: Bearer <key>' or in the X-API-Key header")
    owner = runtime.auth.owner(key)
    remember_owner(request, owner)
    return owner


OaiOwner = Annotated[str, Depends(require_oai_owner)]

router = APIRouter(prefix=PREFIX, tags=["openai"], route_class=_OaiRoute)


def _reply(result: Any) -> Response:
    if isinstance(result, w.Response):
        return JSONResponse(result.model_dump(mode="json"))
    return StreamingResponse(
        _events(result),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(chunks: AsyncIterator[w.Response]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json()}\n\n"
    except Exception as exc:  # noqa: BLE001 - the status line has gone: the error travels as an event
        _status, body = _error_for(exc)
        yield f"data: {body.model_dump_json()}\n\n"
    yield "data: [DONE]\n\n"


@router.post("/completions")
async def completions(body: w.CompletionRequest, owner: OaiOwner, runtime: RuntimeDep) -> Response:
    return _reply(await runtime.oai.completion(owner, body))


@router.post("/chat/completions")
async def chat_completions(body: w.ChatCompletionRequest, owner: OaiOwner, runtime: RuntimeDep) -> Response:
    return _reply(await runtime.oai.chat(owner, body))


@router.get("/models")
def list_models(owner: OaiOwner, runtime: RuntimeDep) -> w.ModelList:
    return runtime.oai.list_models(owner)


@router.get("/models/{model:path}")
def get_model(model: str, owner: OaiOwner, runtime: RuntimeDep) -> w.ModelCard:
    return runtime.oai.get_model(owner, model)

"""The future protocol: long-poll for a submitted request's outcome."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from .. import wire

from ..errors import NotFound
from ..futures import render
from .deps import Owner, RuntimeDep

router = APIRouter(tags=["futures"])


@router.post("/retrieve_future")
async def retrieve_future(body: wire.FutureRetrieveRequest, owner: Owner, runtime: RuntimeDep) -> Response:
    row = runtime.futures.get(body.request_id)
    if row is None or row.owner != owner:
        raise NotFound(f"unknown request_id {body.request_id!r}")
    if row.status == "pending":
        row = await runtime.futures.wait(body.request_id, runtime.settings.long_poll_s)
    status, content = render(row, body.request_id)
    if isinstance(content, str):
        return Response(content, status_code=status, media_type="application/json")
    return JSONResponse(content, status_code=status)

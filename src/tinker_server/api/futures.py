"""The future protocol: long-poll for a submitted request's outcome.

A finished training or sampling result is answered in protobuf when the
request's ``Accept`` names ``application/x-protobuf`` (0.18+ clients), else in
JSON. Not-finished, failed and error answers are always JSON.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response

from .. import wire
from ..errors import NotFound
from ..futures import SAMPLE_MESSAGE, TRAIN_MESSAGE, StoredResult, render
from ..wire import codec
from .deps import Owner, RuntimeDep

router = APIRouter(tags=["futures"])

Accept = Annotated[str, Header()]


@router.post("/retrieve_future")
async def retrieve_future(
    body: wire.FutureRetrieveRequest, owner: Owner, runtime: RuntimeDep, accept: Accept = ""
) -> Response:
    row = runtime.futures.get(body.request_id)
    if row is None or row.owner != owner:
        raise NotFound(f"unknown request_id {body.request_id!r}")
    if row.status == "pending":
        row = await runtime.futures.wait(body.request_id, runtime.settings.long_poll_s)
    status, content = render(row, body.request_id)
    if content is not None or row is None:
        return JSONResponse(content, status_code=status)
    return result_response(runtime.futures.stored_result(row), accept)


def result_response(stored: StoredResult, accept: str) -> Response:
    """A finished request's result in the encoding the client accepts."""
    if stored.message is None:
        return Response(stored.body, media_type="application/json")
    if codec.PROTOBUF in accept.lower():
        return Response(stored.body, media_type=codec.PROTOBUF)
    if stored.message == TRAIN_MESSAGE:
        body = codec.train_result_json(codec.decode_train_result(stored.body))
    elif stored.message == SAMPLE_MESSAGE:
        body = codec.sample_result_json(codec.decode_sample_result(stored.body, stored.sequence_ids))
    else:
        raise ValueError(f"unknown stored result message {stored.message!r}")
    return Response(body, media_type="application/json")

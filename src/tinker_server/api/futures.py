"""The future protocol: long-poll for a submitted request's outcome.

A finished training or sampling result is answered in protobuf when the
request's ``Accept`` names ``application/x-protobuf`` (0.18+ clients), else in
JSON. Not-finished, failed and error answers are always JSON.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

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
    row = await asyncio.to_thread(runtime.futures.get, body.request_id)
    if row is None or row.owner != owner:
        raise NotFound(f"unknown request_id {body.request_id!r}")
    if row.status == "pending":
        row = await runtime.futures.wait(body.request_id, runtime.settings.long_poll_s)
    status, content = render(row, body.request_id, runtime.futures.queue_state(body.request_id))
    if content is not None or row is None:
        return JSONResponse(content, status_code=status)
    stored = await asyncio.to_thread(runtime.futures.stored_result, row)
    if body.allow_metadata_only and len(stored.body) >= runtime.settings.metadata_only_min_bytes:
        # Large payload: tell its size first so the client can reserve room for it (0.14+).
        return JSONResponse({"status": "complete_metadata", "response_payload_size": len(stored.body)})
    return result_response(stored, accept)


@router.post("/retrieve_futures")
async def retrieve_futures(body: wire.RetrieveFuturesRequest, owner: Owner, runtime: RuntimeDep) -> dict[str, Any]:
    """Finished sampling requests of one sampler (clone) after ``prev_cursor`` (0.26+ pollers);
    the payloads are then fetched with ``retrieve_future``."""
    target = body.target
    await asyncio.to_thread(runtime.sampling.get_sampler, owner, target.sampling_session_id)  # 404 unless the caller's
    timeout = (
        runtime.settings.long_poll_s
        if body.timeout is None
        else max(0.0, min(body.timeout, runtime.settings.long_poll_s))
    )
    found, cursor = await runtime.futures.completions(
        owner, target.sampling_session_id, target.cloned_sampler_id, body.prev_cursor, timeout
    )
    completions = [
        {"state": "finished", "request_id": c.request_id, "response_payload_uncompressed_size": c.payload_size}
        if c.status == "done"
        else {"state": "failed", "request_id": c.request_id}
        for c in found
    ]
    return {"completions": completions, "cursor": cursor}


@router.post("/cancel_future")
def cancel_future(body: wire.CancelFutureRequest, owner: Owner, runtime: RuntimeDep) -> dict[str, str]:
    return runtime.sampling.cancel(owner, body.request_id)


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

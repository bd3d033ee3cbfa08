"""Training operations; each returns a future."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError

from .. import wire
from ..convert import check_train_tokens
from ..wire import codec
from .deps import Owner, RuntimeDep

router = APIRouter(tags=["training"])


async def training_body(request: Request) -> wire.ForwardRequest | wire.ForwardBackwardRequest:
    """A ``forward_backward`` body: protobuf when the Content-Type says so (0.25+ clients;
    ``forward_only`` makes it a forward), else JSON. Either may be zstd-compressed."""
    raw = await request.body()  # at most max_body_bytes (guards.BodyLimit)
    encoding = request.headers.get("content-encoding")
    limit = request.app.state.settings.max_body_bytes  # expanded zstd bodies too
    if codec.PROTOBUF in request.headers.get("content-type", "").lower():
        return codec.decode_training_request(raw, encoding, limit=limit)
    try:
        return wire.ForwardBackwardRequest.model_validate_json(codec.decompress(raw, encoding, limit=limit))
    except pydantic.ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


TrainingBody = Annotated[wire.ForwardRequest | wire.ForwardBackwardRequest, Depends(training_body)]

_TRAINING_BODY_DOCS: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "title": "ForwardBackwardRequest"}},
            codec.PROTOBUF: {
                "schema": {"type": "string", "format": "binary", "title": "tinker_oss.wire.v1.ForwardBackwardRequest"}
            },
        },
    }
}


@router.post("/forward")
def forward(body: wire.ForwardRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    check_train_tokens(body.forward_input.data, runtime.settings.max_train_tokens_per_request, field="forward_input")
    return runtime.training.forward(owner, body)


@router.post("/forward_backward", openapi_extra=_TRAINING_BODY_DOCS)
def forward_backward(body: TrainingBody, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    limit = runtime.settings.max_train_tokens_per_request
    if isinstance(body, wire.ForwardRequest):
        check_train_tokens(body.forward_input.data, limit, field="forward_input")
        return runtime.training.forward(owner, body)
    check_train_tokens(body.forward_backward_input.data, limit, field="forward_backward_input")
    return runtime.training.forward_backward(owner, body)


@router.post("/optim_step")
def optim_step(body: wire.OptimStepRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    return runtime.training.optim_step(owner, body)


@router.post("/save_weights")
def save_weights(body: wire.SaveWeightsRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    return runtime.training.save_weights(owner, body)


@router.post("/save_weights_external")
def save_weights_external(
    body: wire.SaveWeightsExternalRequest, owner: Owner, runtime: RuntimeDep
) -> wire.UntypedAPIFuture:
    return runtime.training.save_weights_external(owner, body)


@router.post("/load_weights")
def load_weights(body: wire.LoadWeightsRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    return runtime.training.load_weights(owner, body)


@router.post("/save_weights_for_sampler")
def save_weights_for_sampler(
    body: wire.SaveWeightsForSamplerRequest, owner: Owner, runtime: RuntimeDep
) -> wire.UntypedAPIFuture:
    return runtime.training.save_weights_for_sampler(owner, body)

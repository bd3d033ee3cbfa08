"""Training operations; each returns a future."""

from __future__ import annotations

from fastapi import APIRouter

from .. import wire

from .deps import Owner, RuntimeDep

router = APIRouter(tags=["training"])


@router.post("/forward")
async def forward(body: wire.ForwardRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    return runtime.training.forward(owner, body)


@router.post("/forward_backward")
async def forward_backward(
    body: wire.ForwardBackwardRequest, owner: Owner, runtime: RuntimeDep
) -> wire.UntypedAPIFuture:
    return runtime.training.forward_backward(owner, body)


@router.post("/optim_step")
async def optim_step(body: wire.OptimStepRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    return runtime.training.optim_step(owner, body)


@router.post("/save_weights")
async def save_weights(body: wire.SaveWeightsRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    return runtime.training.save_weights(owner, body)


@router.post("/load_weights")
async def load_weights(body: wire.LoadWeightsRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    return runtime.training.load_weights(owner, body)


@router.post("/save_weights_for_sampler")
async def save_weights_for_sampler(
    body: wire.SaveWeightsForSamplerRequest, owner: Owner, runtime: RuntimeDep
) -> wire.UntypedAPIFuture:
    return runtime.training.save_weights_for_sampler(owner, body)

"""Training operations; each returns a future."""

from __future__ import annotations

from fastapi import APIRouter

from tinker import types

from ..training import LoadWeightsBody
from .deps import Owner, RuntimeDep

router = APIRouter(tags=["training"])


@router.post("/forward")
async def forward(body: types.ForwardRequest, owner: Owner, runtime: RuntimeDep) -> types.UntypedAPIFuture:
    return runtime.training.forward(owner, body)


@router.post("/forward_backward")
async def forward_backward(
    body: types.ForwardBackwardRequest, owner: Owner, runtime: RuntimeDep
) -> types.UntypedAPIFuture:
    return runtime.training.forward_backward(owner, body)


@router.post("/optim_step")
async def optim_step(body: types.OptimStepRequest, owner: Owner, runtime: RuntimeDep) -> types.UntypedAPIFuture:
    return runtime.training.optim_step(owner, body)


@router.post("/save_weights")
async def save_weights(body: types.SaveWeightsRequest, owner: Owner, runtime: RuntimeDep) -> types.UntypedAPIFuture:
    return runtime.training.save_weights(owner, body)


@router.post("/load_weights")
async def load_weights(body: LoadWeightsBody, owner: Owner, runtime: RuntimeDep) -> types.UntypedAPIFuture:
    return runtime.training.load_weights(owner, body)


@router.post("/save_weights_for_sampler")
async def save_weights_for_sampler(
    body: types.SaveWeightsForSamplerRequest, owner: Owner, runtime: RuntimeDep
) -> types.UntypedAPIFuture:
    return runtime.training.save_weights_for_sampler(owner, body)

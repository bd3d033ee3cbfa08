"""Sampling sessions, sampling, and sampler info."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from .. import wire
from .deps import Owner, RuntimeDep

router = APIRouter(tags=["sampling"])


@router.post("/create_sampling_session")
def create_sampling_session(
    body: wire.CreateSamplingSessionRequest, owner: Owner, runtime: RuntimeDep
) -> wire.CreateSamplingSessionResponse:
    return runtime.sampling.create_sampling_session(owner, body)


@router.post("/asample")
def asample(
    body: wire.SampleRequest,
    owner: Owner,
    runtime: RuntimeDep,
    backpressure: Annotated[str | None, Header(alias="X-Tinker-Sampling-Backpressure")] = None,
) -> wire.UntypedAPIFuture:
    return runtime.sampling.asample(owner, body, backpressure=backpressure == "1")


@router.get("/samplers/{sampler_id}")
def get_sampler(sampler_id: str, owner: Owner, runtime: RuntimeDep) -> wire.GetSamplerResponse:
    return runtime.sampling.get_sampler(owner, sampler_id)

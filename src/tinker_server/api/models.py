"""Training models: create, info, unload; weights info; tokenizer files."""

from __future__ import annotations

from fastapi import APIRouter

from .. import wire
from .deps import Owner, RuntimeDep

router = APIRouter(tags=["models"])


@router.post("/create_model")
def create_model(body: wire.CreateModelRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    return runtime.training.create_model(owner, body)


@router.post("/get_info")
async def get_info(body: wire.GetInfoRequest, owner: Owner, runtime: RuntimeDep) -> wire.GetInfoResponse:
    return await runtime.catalog.get_info(owner, body.model_id)


@router.post("/unload_model")
def unload_model(body: wire.UnloadModelRequest, owner: Owner, runtime: RuntimeDep) -> wire.UntypedAPIFuture:
    return runtime.training.unload_model(owner, body.model_id)


@router.post("/weights_info")
def weights_info(body: wire.WeightsInfoRequest, owner: Owner, runtime: RuntimeDep) -> wire.WeightsInfoResponse:
    return runtime.checkpoints.weights_info(owner, body.tinker_path)


@router.post("/tokenizer_files")
async def tokenizer_files(
    body: wire.TokenizerFilesRequest, _owner: Owner, runtime: RuntimeDep
) -> wire.TokenizerFilesResponse:
    """Our extension: a served model's tokenizer files, so clients need no model hub."""
    return await runtime.catalog.tokenizer_files(body.tokenizer_id)

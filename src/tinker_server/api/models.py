"""Training models: create, info, unload; weights info; tokenizer files."""

from __future__ import annotations

from fastapi import APIRouter

from tinker import types

from .deps import Owner, RuntimeDep

router = APIRouter(tags=["models"])


@router.post("/create_model")
async def create_model(body: types.CreateModelRequest, owner: Owner, runtime: RuntimeDep) -> types.UntypedAPIFuture:
    return runtime.training.create_model(owner, body)


@router.post("/get_info")
async def get_info(body: types.GetInfoRequest, owner: Owner, runtime: RuntimeDep) -> types.GetInfoResponse:
    return await runtime.catalog.get_info(owner, body.model_id)


@router.post("/unload_model")
async def unload_model(body: types.UnloadModelRequest, owner: Owner, runtime: RuntimeDep) -> types.UntypedAPIFuture:
    return runtime.training.unload_model(owner, body.model_id)


@router.post("/weights_info")
async def weights_info(body: types.WeightsInfoRequest, owner: Owner, runtime: RuntimeDep) -> types.WeightsInfoResponse:
    return runtime.checkpoints.weights_info(owner, body.tinker_path)


@router.post("/tokenizer_files")
async def tokenizer_files(
    body: types.TokenizerFilesRequest, _owner: Owner, runtime: RuntimeDep
) -> types.TokenizerFilesResponse:
    """Our extension: a served model's tokenizer files, so clients need no model hub."""
    return await runtime.catalog.tokenizer_files(body.tokenizer_id)

"""Training runs and checkpoints (REST), and the signed archive download.

Checkpoint ids contain a slash (``weights/<name>``), so routes take
``{checkpoint_id:path}``; the ``/archive`` and ``/publish`` routes are declared
before the bare checkpoint route, which would otherwise swallow them.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from .. import wire

from ..paths import KIND_TO_TYPE
from .deps import Limit, Offset, Owner, RuntimeDep

router = APIRouter(tags=["runs"])

_CHECKPOINT = "/training_runs/{run_id}/checkpoints/{checkpoint_id:path}"


@router.get("/training_runs")
async def list_training_runs(
    owner: Owner, runtime: RuntimeDep, limit: Limit = 20, offset: Offset = 0
) -> wire.TrainingRunsResponse:
    return runtime.checkpoints.list_runs(owner, limit, offset)


@router.get("/training_runs/{run_id}")
async def get_training_run(run_id: str, owner: Owner, runtime: RuntimeDep) -> wire.TrainingRun:
    return runtime.checkpoints.get_run(owner, run_id)


@router.get("/training_runs/{run_id}/checkpoints")
async def list_checkpoints(run_id: str, owner: Owner, runtime: RuntimeDep) -> wire.CheckpointsListResponse:
    return runtime.checkpoints.list_run_checkpoints(owner, run_id)


@router.get(_CHECKPOINT + "/archive")
async def checkpoint_archive(run_id: str, checkpoint_id: str, request: Request, owner: Owner, runtime: RuntimeDep) -> Response:
    base_url = runtime.settings.public_base_url or str(request.base_url)
    url, expires = runtime.checkpoints.archive_link(owner, run_id, checkpoint_id, base_url)
    return Response(status_code=302, headers={"Location": url, "Expires": expires})


@router.post(_CHECKPOINT + "/publish")
async def publish_checkpoint(run_id: str, checkpoint_id: str, owner: Owner, runtime: RuntimeDep) -> dict[str, str]:
    runtime.checkpoints.set_public(owner, run_id, checkpoint_id, True)
    return {"status": "published"}


@router.delete(_CHECKPOINT + "/publish")
async def unpublish_checkpoint(run_id: str, checkpoint_id: str, owner: Owner, runtime: RuntimeDep) -> dict[str, str]:
    if checkpoint_id in KIND_TO_TYPE:
        # DELETE .../checkpoints/weights/publish: deleting a checkpoint named "publish".
        runtime.checkpoints.delete(owner, run_id, f"{checkpoint_id}/publish")
        return {"status": "deleted"}
    runtime.checkpoints.set_public(owner, run_id, checkpoint_id, False)
    return {"status": "unpublished"}


@router.delete(_CHECKPOINT)
async def delete_checkpoint(run_id: str, checkpoint_id: str, owner: Owner, runtime: RuntimeDep) -> dict[str, str]:
    runtime.checkpoints.delete(owner, run_id, checkpoint_id)
    return {"status": "deleted"}


@router.get("/checkpoints")
async def list_user_checkpoints(
    owner: Owner, runtime: RuntimeDep, limit: Limit = 100, offset: Offset = 0
) -> wire.CheckpointsListResponse:
    return runtime.checkpoints.list_user_checkpoints(owner, limit, offset)


@router.get("/archives/{token}")
def download_archive(token: str, runtime: RuntimeDep) -> FileResponse:
    """The signed URL from ``.../archive``: no API key; tampered or expired → 403."""
    path, filename = runtime.checkpoints.archive_file(token)
    return FileResponse(
        path,
        media_type="application/x-tar",
        filename=filename,
        background=BackgroundTask(path.unlink, missing_ok=True),
    )

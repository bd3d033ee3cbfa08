"""Training runs and checkpoints (REST), the signed archive download and the signed
files of external exports.

Checkpoint ids contain a slash (``weights/<name>``, ``external_weights/<name>``), so
routes take ``{checkpoint_id:path}``; the routes with a suffix (``/archive``,
``/publish``, ``/ttl``, ``/external_weights_urls``) are declared before the bare
checkpoint route, which would otherwise swallow them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from .. import wire
from ..paths import KIND_TO_TYPE
from .deps import Limit, Offset, Owner, RuntimeDep

router = APIRouter(tags=["runs"])

_CHECKPOINT = "/training_runs/{run_id}/checkpoints/{checkpoint_id:path}"
# The SDK version both the official clients and ours send.
ClientVersion = Annotated[str | None, Header(alias="X-Stainless-Package-Version")]


def _lists_external(version: str | None) -> bool:
    """Clients before 0.28 reject a checkpoint whose type they do not know (``external``),
    so their listings leave external exports out. Unknown or missing versions see them."""
    match = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return match is None or (int(match[1]), int(match[2])) >= (0, 28)


def _base_url(runtime: RuntimeDep, request: Request) -> str:
    return runtime.settings.public_base_url or str(request.base_url)


@router.get("/training_runs")
def list_training_runs(
    owner: Owner, runtime: RuntimeDep, limit: Limit = 20, offset: Offset = 0
) -> wire.TrainingRunsResponse:
    return runtime.checkpoints.list_runs(owner, limit, offset)


@router.get("/training_runs/{run_id}")
def get_training_run(run_id: str, owner: Owner, runtime: RuntimeDep) -> wire.TrainingRun:
    return runtime.checkpoints.get_run(owner, run_id)


@router.get("/training_runs/{run_id}/checkpoints")
def list_checkpoints(
    run_id: str, owner: Owner, runtime: RuntimeDep, version: ClientVersion = None
) -> wire.CheckpointsListResponse:
    return runtime.checkpoints.list_run_checkpoints(owner, run_id, include_external=_lists_external(version))


@router.get(_CHECKPOINT + "/archive")
def checkpoint_archive(
    run_id: str, checkpoint_id: str, request: Request, owner: Owner, runtime: RuntimeDep
) -> Response:
    url, expires = runtime.checkpoints.archive_link(owner, run_id, checkpoint_id, _base_url(runtime, request))
    return Response(status_code=302, headers={"Location": url, "Expires": expires})


@router.get(_CHECKPOINT + "/external_weights_urls")
def external_weights_urls(
    run_id: str, checkpoint_id: str, request: Request, owner: Owner, runtime: RuntimeDep
) -> wire.ExternalWeightsUrlsResponse:
    return runtime.checkpoints.external_urls(owner, run_id, checkpoint_id, _base_url(runtime, request))


@router.put(_CHECKPOINT + "/ttl")
def set_checkpoint_ttl(
    run_id: str, checkpoint_id: str, body: wire.SetCheckpointTtlRequest, owner: Owner, runtime: RuntimeDep
) -> wire.Checkpoint:
    return runtime.checkpoints.set_ttl(owner, run_id, checkpoint_id, body.ttl_seconds)


@router.post(_CHECKPOINT + "/publish")
def publish_checkpoint(run_id: str, checkpoint_id: str, owner: Owner, runtime: RuntimeDep) -> dict[str, str]:
    runtime.checkpoints.set_public(owner, run_id, checkpoint_id, True)
    return {"status": "published"}


# Deleting may wait for a save of the same checkpoint to finish: a plain ``def`` runs in
# the thread pool, never on the event loop.
@router.delete(_CHECKPOINT + "/publish")
def unpublish_checkpoint(run_id: str, checkpoint_id: str, owner: Owner, runtime: RuntimeDep) -> dict[str, str]:
    if checkpoint_id in KIND_TO_TYPE:
        # DELETE .../checkpoints/weights/publish: deleting a checkpoint named "publish".
        runtime.checkpoints.delete(owner, run_id, f"{checkpoint_id}/publish")
        return {"status": "deleted"}
    runtime.checkpoints.set_public(owner, run_id, checkpoint_id, False)
    return {"status": "unpublished"}


@router.delete(_CHECKPOINT)
def delete_checkpoint(run_id: str, checkpoint_id: str, owner: Owner, runtime: RuntimeDep) -> dict[str, str]:
    runtime.checkpoints.delete(owner, run_id, checkpoint_id)
    return {"status": "deleted"}


@router.get("/checkpoints")
def list_user_checkpoints(
    owner: Owner, runtime: RuntimeDep, limit: Limit = 100, offset: Offset = 0, version: ClientVersion = None
) -> wire.CheckpointsListResponse:
    return runtime.checkpoints.list_user_checkpoints(owner, limit, offset, include_external=_lists_external(version))


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


@router.get("/external_files/{token}")
def download_external_file(token: str, runtime: RuntimeDep) -> StreamingResponse:
    """One file of an external export, from ``.../external_weights_urls``: no API key;
    tampered or expired → 403, export deleted → 404."""
    handle, size, name = runtime.checkpoints.external_file(token)

    def chunks() -> Iterator[bytes]:
        with handle:
            while block := handle.read(1 << 20):
                yield block

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{quote(name)}"'},
    )

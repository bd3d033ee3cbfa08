"""The JSON the web console reads (``/api/v1/console/...``), scoped to the caller's key.

The same views the console's HTML fragments are rendered from; handy for scripts too.
Changes (publish, delete, ttl) go through the ordinary REST routes in ``runs.py``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..console.service import ConsoleDep
from ..console.views import (
    DownloadLink,
    MetricPoints,
    PlaygroundModels,
    PlaygroundRequest,
    PlaygroundResult,
    QueueView,
    RunDetail,
    RunsPage,
    SessionsPage,
)
from .deps import Limit, Offset, Owner

router = APIRouter(prefix="/console", tags=["console"])


@router.get("/runs")
def runs(owner: Owner, console: ConsoleDep, limit: Limit = 25, offset: Offset = 0) -> RunsPage:
    return console.queries.runs_page(owner, offset, limit)


@router.get("/runs/{run_id}")
def run_detail(
    run_id: str, owner: Owner, console: ConsoleDep, checkpoints_limit: Limit = 20, checkpoints_offset: Offset = 0
) -> RunDetail:
    return console.queries.run_detail(owner, run_id, checkpoints_offset, checkpoints_limit)


@router.get("/runs/{run_id}/metrics")
def metric_points(
    run_id: str, kind: str, name: str, owner: Owner, console: ConsoleDep, after: int = 0, limit: Limit = 1000
) -> MetricPoints:
    """One series at full resolution, ``limit`` steps after ``after`` (long runs' charts are bucketed)."""
    return console.queries.metric_points(owner, run_id, kind, name, after, limit)


@router.get("/runs/{run_id}/checkpoints/{checkpoint_id:path}/download")
def download_link(run_id: str, checkpoint_id: str, request: Request, owner: Owner, console: ConsoleDep) -> DownloadLink:
    base_url = request.app.state.settings.public_base_url or str(request.base_url)
    return console.queries.download_link(owner, run_id, checkpoint_id, base_url)


@router.get("/sessions")
def sessions(owner: Owner, console: ConsoleDep, limit: Limit = 25, offset: Offset = 0) -> SessionsPage:
    return console.queries.sessions_page(owner, offset, limit)


@router.get("/queue")
def queue(_owner: Owner, console: ConsoleDep) -> QueueView:
    return console.queries.queue()


@router.get("/playground/models")
def playground_models(owner: Owner, console: ConsoleDep) -> PlaygroundModels:
    return console.queries.playground_models(owner)


@router.post("/playground/sample")
async def playground_sample(body: PlaygroundRequest, owner: Owner, console: ConsoleDep) -> PlaygroundResult:
    return await console.playground.sample(owner, body)

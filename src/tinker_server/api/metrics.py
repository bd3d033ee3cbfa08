"""``GET /metrics``: the server's Prometheus metrics (no API key; no tenant data)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..observability import CONTENT_TYPE_LATEST, Metrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Synchronous on purpose: reading the live-session count queries the database."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)

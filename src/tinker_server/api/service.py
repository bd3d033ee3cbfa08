"""Service endpoints: health, capabilities, telemetry."""

from __future__ import annotations

from fastapi import APIRouter, Request

from .. import wire

from .deps import Owner, RuntimeDep

router = APIRouter(tags=["service"])


@router.get("/healthz")
async def healthz() -> wire.HealthResponse:
    return wire.HealthResponse(status="ok")


@router.get("/get_server_capabilities")
async def get_server_capabilities(_owner: Owner, runtime: RuntimeDep) -> wire.GetServerCapabilitiesResponse:
    return runtime.catalog.capabilities()


@router.post("/telemetry")
async def telemetry(request: Request) -> wire.TelemetryResponse:
    """Accepts any body, always: a failing endpoint would slow every client error (Q10)."""
    await request.body()
    return wire.TelemetryResponse(status="accepted")

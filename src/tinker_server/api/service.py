"""Service endpoints: health, capabilities, client configuration, telemetry, the caller's key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from .. import protocol, wire
from ..auth import api_key_info
from .deps import Owner, RuntimeDep

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz() -> wire.HealthResponse:
    return wire.HealthResponse(status="ok")


@router.get("/get_server_capabilities")
def get_server_capabilities(_owner: Owner, runtime: RuntimeDep) -> wire.GetServerCapabilitiesResponse:
    return runtime.catalog.capabilities()


@router.post("/telemetry")
async def telemetry(request: Request) -> wire.TelemetryResponse:
    """Accepts any body, always: a failing endpoint would slow every client error (Q10)."""
    await request.body()
    return wire.TelemetryResponse(status="accepted")


@router.post("/client/config")
def client_config(_owner: Owner, runtime: RuntimeDep) -> dict[str, Any]:
    """What 0.18+ clients ask first: the protocol features this server supports."""
    return protocol.client_config(runtime.settings)


@router.post("/client/dynamic_config")
def client_dynamic_config(_owner: Owner, runtime: RuntimeDep) -> dict[str, Any]:
    return protocol.client_dynamic_config(runtime.settings)


@router.get("/auth/apikey/me")
def api_key_me(owner: Owner) -> wire.ApiKeyInfo:
    """The key in use (``tinker auth login`` checks a pasted key with it)."""
    return api_key_info(owner)

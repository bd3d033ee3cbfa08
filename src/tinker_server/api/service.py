"""Service endpoints: health, capabilities, client configuration, telemetry, the caller's key
and its usage."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pydantic
from fastapi import APIRouter, Request

from .. import protocol, wire
from ..auth import api_key_info
from ..usage import read_usage
from .deps import Caller, Owner, RuntimeDep

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
def api_key_me(caller: Caller) -> wire.ApiKeyInfo:
    """The key in use (``tinker auth login`` checks a pasted key with it): an issued key's
    name and id, or the tenant an open-mode key maps to."""
    return api_key_info(caller)


class KeyRevoked(pydantic.BaseModel):
    revoked: bool
    note: str


@router.delete("/auth/apikey/me")
def revoke_api_key_me(caller: Caller, runtime: RuntimeDep) -> KeyRevoked:
    """``tinker auth logout`` (0.38): revokes the key in use, when it is an issued one."""
    if caller.key is None:
        return KeyRevoked(revoked=False, note="this server does not issue keys in its current mode; nothing to revoke")
    key = runtime.keys.revoke(str(caller.key.id))
    return KeyRevoked(revoked=True, note=f"key {key.name!r} (id {key.id}) is revoked; it no longer works")


class UsageResponse(pydantic.BaseModel):
    """``GET /api/v1/usage`` (this server's extension): what the caller's tenant has used."""

    owner: str
    key_id: int | None
    name: str | None
    train_requests: int
    train_tokens: int
    sample_requests: int
    sampled_tokens: int
    checkpoints: int
    checkpoint_bytes: int
    first_time: dt.datetime | None
    last_time: dt.datetime | None
    quota: dict[str, Any]


@router.get("/usage")
def usage(caller: Caller, runtime: RuntimeDep) -> UsageResponse:
    """The caller's usage: tokens trained (``forward_backward`` inputs) and sampled
    (generated tokens) by successful requests, and its checkpoints' storage; with its
    limits (``null``: none)."""
    (mine,) = read_usage(runtime.db, [caller.owner])
    quota = runtime.tenants.quota(caller.owner)
    return UsageResponse(
        owner=mine.owner,
        key_id=caller.key.id if caller.key is not None else None,
        name=caller.key.name if caller.key is not None else None,
        train_requests=mine.train_requests,
        train_tokens=mine.train_tokens,
        sample_requests=mine.sample_requests,
        sampled_tokens=mine.sampled_tokens,
        checkpoints=mine.checkpoints,
        checkpoint_bytes=mine.checkpoint_bytes,
        first_time=mine.first_time,
        last_time=mine.last_time,
        quota=quota.as_dict(),
    )

"""Sessions: create, heartbeat, finish, list, get."""

from __future__ import annotations

from fastapi import APIRouter

from .. import wire
from .deps import Limit, Offset, Owner, RuntimeDep

router = APIRouter(tags=["sessions"])


@router.post("/create_session")
def create_session(body: wire.CreateSessionRequest, owner: Owner, runtime: RuntimeDep) -> wire.CreateSessionResponse:
    return runtime.sessions.create(owner, body)


@router.post("/session_heartbeat")
def session_heartbeat(
    body: wire.SessionHeartbeatRequest, owner: Owner, runtime: RuntimeDep
) -> wire.SessionHeartbeatResponse:
    return runtime.sessions.heartbeat(owner, body.session_id)


@router.get("/sessions")
def list_sessions(
    owner: Owner, runtime: RuntimeDep, limit: Limit = 20, offset: Offset = 0
) -> wire.ListSessionsResponse:
    return runtime.sessions.list_sessions(owner, limit, offset)


@router.get("/sessions/{session_id}")
def get_session(session_id: str, owner: Owner, runtime: RuntimeDep) -> wire.GetSessionResponse:
    return runtime.sessions.get(owner, session_id)


@router.post("/sessions/{session_id}/finish")
def finish_session(
    session_id: str, body: wire.SessionFinishRequest, owner: Owner, runtime: RuntimeDep
) -> dict[str, str]:
    return runtime.sessions.finish(owner, session_id, body)

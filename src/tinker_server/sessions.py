"""Sessions: creation, heartbeats, listing, and expiry of silent sessions.

A session whose last heartbeat is older than ``session_timeout_s`` is marked
expired; its training runs and samplers leave engine memory (their metadata and
checkpoints stay). A later heartbeat revives the session itself, but not the
dropped adapters: runs are resumed from checkpoints.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from . import wire
from .context import Context
from .db import SamplerRow, SessionRow, TrainingRunRow, utcnow
from .engine.api import DropAdapter
from .errors import Gone
from .records import owned_session, page_bounds
from .scheduler import Task

__all__ = ["SessionService", "check_not_finished"]

log = logging.getLogger(__name__)


def check_not_finished(row: SessionRow) -> None:
    """410 for work in a session the client has finished (0.26+ clients stop heartbeating on 410)."""
    if row.finished_reason is not None:
        raise Gone(f"session {row.id} was finished by the client ({row.finished_reason}); start a new session")


@dataclass(frozen=True)
class _Drop:
    base_model: str
    adapter_id: str
    queue_key: str | None


class SessionService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def create(self, owner: str, request: wire.CreateSessionRequest) -> wire.CreateSessionResponse:
        now = utcnow()
        session_id = str(uuid.uuid4())
        with self._ctx.db.session() as s:
            s.add(
                SessionRow(
                    id=session_id,
                    owner=owner,
                    tags=list(request.tags),
                    user_metadata=request.user_metadata,
                    sdk_version=request.sdk_version,
                    created_at=now,
                    last_heartbeat=now,
                    expired=False,
                    display_name=request.display_name,
                    project_id=request.project_id,
                )
            )
        return wire.CreateSessionResponse(session_id=session_id)

    def heartbeat(self, owner: str, session_id: str) -> wire.SessionHeartbeatResponse:
        with self._ctx.db.session() as s:
            row = owned_session(s, session_id, owner)
            check_not_finished(row)
            row.last_heartbeat = utcnow()
            row.expired = False
        return wire.SessionHeartbeatResponse()

    def finish(self, owner: str, session_id: str, request: wire.SessionFinishRequest) -> dict[str, str]:
        """The client is done with the session (0.27+ ``ServiceClient.close``): its adapters
        leave memory at once; runs, samplers' metadata and checkpoints stay. The first reason
        wins; finishing again is a no-op."""
        with self._ctx.db.session() as s:
            row = owned_session(s, session_id, owner)
            if row.finished_reason is None:
                row.finished_reason = request.reason.type
        self._release([session_id], f"its session was finished by the client ({request.reason.type})")
        return {"status": "finished"}

    def list_sessions(self, owner: str, limit: int, offset: int) -> wire.ListSessionsResponse:
        limit, offset = page_bounds(limit, offset)
        with self._ctx.db.session() as s:
            ids = s.scalars(
                sa.select(SessionRow.id)
                .where(SessionRow.owner == owner)
                .order_by(SessionRow.created_at.desc(), SessionRow.id)
                .limit(limit)
                .offset(offset)
            ).all()
        return wire.ListSessionsResponse(sessions=list(ids))

    def get(self, owner: str, session_id: str) -> wire.GetSessionResponse:
        with self._ctx.db.session() as s:
            row = owned_session(s, session_id, owner)
            runs = s.scalars(
                sa.select(TrainingRunRow.id)
                .where(TrainingRunRow.session_id == session_id)
                .order_by(TrainingRunRow.model_seq_id)
            ).all()
            samplers = s.scalars(
                sa.select(SamplerRow.id).where(SamplerRow.session_id == session_id).order_by(SamplerRow.created_at)
            ).all()
            return wire.GetSessionResponse(
                training_run_ids=list(runs),
                sampler_ids=list(samplers),
                display_name=row.display_name,
                user_metadata=row.user_metadata,
            )

    # -- expiry -----------------------------------------------------------------------------

    def expire_stale(self, now: dt.datetime | None = None) -> list[str]:
        """Expire sessions without a heartbeat for ``session_timeout_s``; returns their ids."""
        now = now or utcnow()
        timeout = self._ctx.settings.session_timeout_s
        cutoff = now - dt.timedelta(seconds=timeout)
        with self._ctx.db.session() as s:
            stale = s.scalars(
                sa.select(SessionRow).where(SessionRow.expired.is_(False), SessionRow.last_heartbeat < cutoff)
            ).all()
            ids = [row.id for row in stale]
        if ids:
            self._release(ids, f"its session expired (no heartbeat for {timeout:g} s)")
        return ids

    def _release(self, ids: list[str], reason: str) -> None:
        """Mark the sessions expired and drop their runs' and samplers' adapters."""
        drops: list[_Drop] = []
        with self._ctx.db.session() as s:
            for row in s.scalars(sa.select(SessionRow).where(SessionRow.id.in_(ids))).all():
                row.expired = True
            runs = s.scalars(
                sa.select(TrainingRunRow).where(
                    TrainingRunRow.session_id.in_(ids), TrainingRunRow.unloaded_reason.is_(None)
                )
            ).all()
            for run in runs:
                run.unloaded_reason = reason
                drops.append(_Drop(run.base_model, run.id, run.id))
            samplers = s.scalars(
                sa.select(SamplerRow).where(
                    SamplerRow.session_id.in_(ids), SamplerRow.unloaded_reason.is_(None), SamplerRow.has_adapter
                )
            ).all()
            for sampler in samplers:
                sampler.unloaded_reason = reason
                drops.append(_Drop(sampler.base_model, sampler.id, None))
        for drop in drops:
            self._drop_adapter(drop)
        log.info("released %d session(s) (%s), dropped %d adapter(s)", len(ids), reason, len(drops))

    def _drop_adapter(self, drop: _Drop) -> None:
        try:
            worker = self._ctx.scheduler.worker(drop.base_model)
        except Exception:  # noqa: BLE001 - a model no longer served holds no adapters
            return
        if not worker.loaded:
            return  # nothing is in its memory
        worker.submit(Task(DropAdapter(drop.adapter_id), queue_key=drop.queue_key))

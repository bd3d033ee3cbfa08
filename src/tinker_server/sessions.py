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
from typing import Any

import sqlalchemy as sa

from . import wire

from .context import Context
from .db import SamplerRow, SessionRow, TrainingRunRow, utcnow
from .records import owned_session, page_bounds
from .scheduler import CallTask

__all__ = ["SessionService"]

log = logging.getLogger(__name__)


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
                )
            )
        return wire.CreateSessionResponse(session_id=session_id)

    def heartbeat(self, owner: str, session_id: str) -> wire.SessionHeartbeatResponse:
        with self._ctx.db.session() as s:
            row = owned_session(s, session_id, owner)
            row.last_heartbeat = utcnow()
            row.expired = False
        return wire.SessionHeartbeatResponse()

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
            owned_session(s, session_id, owner)
            runs = s.scalars(
                sa.select(TrainingRunRow.id)
                .where(TrainingRunRow.session_id == session_id)
                .order_by(TrainingRunRow.model_seq_id)
            ).all()
            samplers = s.scalars(
                sa.select(SamplerRow.id).where(SamplerRow.session_id == session_id).order_by(SamplerRow.created_at)
            ).all()
        return wire.GetSessionResponse(training_run_ids=list(runs), sampler_ids=list(samplers))

    # -- expiry -----------------------------------------------------------------------------

    def expire_stale(self, now: dt.datetime | None = None) -> list[str]:
        """Expire sessions without a heartbeat for ``session_timeout_s``; returns their ids."""
        now = now or utcnow()
        timeout = self._ctx.settings.session_timeout_s
        cutoff = now - dt.timedelta(seconds=timeout)
        drops: list[_Drop] = []
        with self._ctx.db.session() as s:
            stale = s.scalars(
                sa.select(SessionRow).where(SessionRow.expired.is_(False), SessionRow.last_heartbeat < cutoff)
            ).all()
            if not stale:
                return []
            ids = [row.id for row in stale]
            for row in stale:
                row.expired = True
            reason = f"its session expired (no heartbeat for {timeout:g} s)"
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
        log.info("expired %d session(s), dropped %d adapter(s)", len(ids), len(drops))
        return ids

    def _drop_adapter(self, drop: _Drop) -> None:
        try:
            worker = self._ctx.scheduler.worker(drop.base_model)
        except Exception:  # noqa: BLE001 - a model no longer served holds no adapters
            return
        if worker.engine is None:
            return
        adapter_id = drop.adapter_id

        def _drop(engine: Any) -> None:
            if engine.has_adapter(adapter_id):
                engine.drop_adapter(adapter_id)

        worker.submit(CallTask(queue_key=drop.queue_key, fn=_drop))

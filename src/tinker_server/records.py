"""Lookups of metadata rows with tenant scoping.

Another tenant's object reads exactly like a missing one (``NotFound``), so ids
leak nothing. Public checkpoints are the one exception: anyone may read them.
A checkpoint past its ``expires_at`` reads like a missing one too.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import wire
from .db import CheckpointRow, SamplerRow, SessionRow, TrainingRunRow, as_utc, utcnow
from .errors import Gone, InvalidRequest, NotFound
from .paths import CheckpointRef, parse_tinker_path

__all__ = [
    "checkpoint_model",
    "find_checkpoint",
    "iso",
    "not_expired",
    "owned_run",
    "owned_sampler",
    "owned_session",
    "newest_checkpoints",
    "newest_owned",
    "page_bounds",
    "readable_checkpoint",
    "readable_source",
    "training_run_model",
]


def iso(value: dt.datetime) -> str:
    return as_utc(value).isoformat().replace("+00:00", "Z")


def owned_session(session: Session, session_id: str, owner: str) -> SessionRow:
    row = session.get(SessionRow, session_id)
    if row is None or row.owner != owner:
        raise NotFound(f"session {session_id!r} not found")
    return row


def owned_run(session: Session, run_id: str, owner: str) -> TrainingRunRow:
    row = session.get(TrainingRunRow, run_id)
    if row is None or row.owner != owner:
        raise NotFound(f"training run (model_id) {run_id!r} not found")
    return row


def owned_sampler(session: Session, sampler_id: str, owner: str) -> SamplerRow:
    row = session.get(SamplerRow, sampler_id)
    if row is None or row.owner != owner:
        raise NotFound(f"sampler (sampling_session_id) {sampler_id!r} not found")
    return row


def not_expired(now: dt.datetime | None = None) -> sa.ColumnElement[bool]:
    """SQL condition: the checkpoint has no expiry or it lies after ``now``.

    An expired checkpoint is gone for every reader at once; the sweeper only
    reclaims its row and folder later.
    """
    return sa.or_(CheckpointRow.expires_at.is_(None), CheckpointRow.expires_at > (now or utcnow()))


def find_checkpoint(session: Session, ref: CheckpointRef, *, include_expired: bool = False) -> CheckpointRow | None:
    query = sa.select(CheckpointRow).where(
        CheckpointRow.run_id == ref.run_id, CheckpointRow.checkpoint_id == ref.checkpoint_id
    )
    if not include_expired:
        query = query.where(not_expired())
    return session.scalars(query).first()


def readable_checkpoint(session: Session, ref: CheckpointRef, owner: str) -> tuple[TrainingRunRow, CheckpointRow]:
    """The checkpoint and its run, if ``owner`` owns it or it is public."""
    run = session.get(TrainingRunRow, ref.run_id)
    row = find_checkpoint(session, ref) if run is not None else None
    if run is None or row is None or (run.owner != owner and not row.public):
        raise NotFound(f"checkpoint {ref.tinker_path} not found")
    return run, row


INT64_MAX = 2**63 - 1


def readable_source(session: Session, sampler_id: str, model_path: str, owner: str) -> CheckpointRow:
    """The checkpoint a checkpoint sampler samples, checked on every use: once its owner
    unpublishes or deletes it (or it expires), a sampler another tenant made from it is
    gone (410), the same sentence whichever happened."""
    try:
        _run, row = readable_checkpoint(session, parse_tinker_path(model_path), owner)
    except (NotFound, InvalidRequest):
        raise Gone(
            f"sampler {sampler_id} samples {model_path}, which no longer exists or is no longer "
            "shared with you (deleted, expired or made private by its owner); create a sampler from a "
            "checkpoint you can read"
        ) from None
    return row


def page_bounds(limit: int, offset: int) -> tuple[int, int]:
    """``(limit, offset)`` of a listing; both must fit a 64-bit integer (the database's)."""
    if limit <= 0 or limit > INT64_MAX:
        raise InvalidRequest(f"limit must be a positive integer below 2**63, got {limit}")
    if offset < 0 or offset > INT64_MAX:
        raise InvalidRequest(f"offset must be an integer from 0 to 2**63 - 1, got {offset}")
    return limit, offset


OwnedRow = TypeVar("OwnedRow", TrainingRunRow, SessionRow)


def newest_owned(
    session: Session, model: type[OwnedRow], owner: str, limit: int, offset: int
) -> tuple[int, list[OwnedRow]]:
    """One page of the owner's runs or sessions, newest first, and how many there are."""
    total = session.scalar(sa.select(sa.func.count()).select_from(model).where(model.owner == owner))
    rows = session.scalars(
        sa.select(model)
        .where(model.owner == owner)
        .order_by(model.created_at.desc(), model.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return int(total or 0), list(rows)


def newest_checkpoints(session: Session, where: Any, limit: int, offset: int) -> tuple[int, list[CheckpointRow]]:
    """One page of the checkpoints matching ``where``, newest first, and how many match."""
    total = session.scalar(sa.select(sa.func.count()).select_from(CheckpointRow).where(where))
    rows = session.scalars(
        sa.select(CheckpointRow)
        .where(where)
        .order_by(CheckpointRow.time.desc(), CheckpointRow.pk.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return int(total or 0), list(rows)


def checkpoint_model(row: CheckpointRow) -> wire.Checkpoint:
    return wire.Checkpoint(
        checkpoint_id=row.checkpoint_id,
        checkpoint_type=row.checkpoint_type,  # type: ignore[arg-type]
        time=as_utc(row.time),
        tinker_path=row.tinker_path,
        size_bytes=row.size_bytes,
        public=row.public,
        expires_at=as_utc(row.expires_at) if row.expires_at is not None else None,
        user_metadata=row.user_metadata,
    )


def _latest(session: Session, run_id: str, checkpoint_type: str, *, public_only: bool = False) -> CheckpointRow | None:
    query = sa.select(CheckpointRow).where(
        CheckpointRow.run_id == run_id, CheckpointRow.checkpoint_type == checkpoint_type, not_expired()
    )
    if public_only:
        query = query.where(CheckpointRow.public.is_(True))
    return session.scalars(query.order_by(CheckpointRow.time.desc(), CheckpointRow.pk.desc()).limit(1)).first()


def _str_metadata(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    return {str(k): v if isinstance(v, str) else str(v) for k, v in metadata.items()}


def training_run_model(session: Session, run: TrainingRunRow, *, public_view: bool = False) -> wire.TrainingRun:
    """The run as ``GET /training_runs/{id}`` shows it. ``public_view`` (another tenant, allowed
    because the run has a public checkpoint): what ``create_training_client_from_state`` reads
    (base model, LoRA rank) and the newest *public* checkpoints; the owner is blank, there is
    no ``user_metadata``, and the time is that of the newest public checkpoint, not the
    run's last activity."""
    last = _latest(session, run.id, "training", public_only=public_view)
    last_sampler = _latest(session, run.id, "sampler", public_only=public_view)
    activity = as_utc(run.last_request_time)
    if public_view:
        newest = _latest_public(session, run.id)
        activity = as_utc(newest.time) if newest is not None else as_utc(run.created_at)
    return wire.TrainingRun(
        training_run_id=run.id,
        base_model=run.base_model,
        model_owner="" if public_view else run.owner,
        is_lora=True,
        corrupted=run.corrupted,
        lora_rank=run.lora_rank,
        last_request_time=activity,
        last_checkpoint=checkpoint_model(last) if last is not None else None,
        last_sampler_checkpoint=checkpoint_model(last_sampler) if last_sampler is not None else None,
        user_metadata=None if public_view else _str_metadata(run.user_metadata),
    )


def _latest_public(session: Session, run_id: str) -> CheckpointRow | None:
    return session.scalars(
        sa.select(CheckpointRow)
        .where(CheckpointRow.run_id == run_id, CheckpointRow.public.is_(True), not_expired())
        .order_by(CheckpointRow.time.desc(), CheckpointRow.pk.desc())
        .limit(1)
    ).first()

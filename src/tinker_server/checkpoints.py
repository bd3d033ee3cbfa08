"""Training runs and checkpoints as the REST endpoints show them.

Listing, deleting, publishing, weights info and archive links. Only the run's
owner may change a checkpoint; public checkpoints can be read by anyone.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import pathlib
import shutil
import uuid

import sqlalchemy as sa

from . import wire

from .archive import ArchiveSigner, build_tar
from .context import Context
from .db import CheckpointRow, TrainingRunRow
from .errors import InvalidRequest, NotFound
from .paths import checkpoint_dir, parse_checkpoint_id, parse_tinker_path
from .records import checkpoint_model, find_checkpoint, owned_run, page_bounds, readable_checkpoint, training_run_model

__all__ = ["CheckpointService"]

log = logging.getLogger(__name__)


class CheckpointService:
    def __init__(self, ctx: Context, signer: ArchiveSigner) -> None:
        self._ctx = ctx
        self._signer = signer

    # -- runs -------------------------------------------------------------------------------

    def list_runs(self, owner: str, limit: int, offset: int) -> wire.TrainingRunsResponse:
        limit, offset = page_bounds(limit, offset)
        with self._ctx.db.session() as s:
            total = s.scalar(sa.select(sa.func.count()).select_from(TrainingRunRow).where(TrainingRunRow.owner == owner))
            rows = s.scalars(
                sa.select(TrainingRunRow)
                .where(TrainingRunRow.owner == owner)
                .order_by(TrainingRunRow.created_at.desc(), TrainingRunRow.id)
                .limit(limit)
                .offset(offset)
            ).all()
            runs = [training_run_model(s, row) for row in rows]
        return wire.TrainingRunsResponse(
            training_runs=runs, cursor=wire.Cursor(offset=offset, limit=limit, total_count=int(total or 0))
        )

    def _has_public(self, s: sa.orm.Session, run_id: str) -> bool:
        return (
            s.scalars(
                sa.select(CheckpointRow.pk).where(CheckpointRow.run_id == run_id, CheckpointRow.public.is_(True))
            ).first()
            is not None
        )

    def get_run(self, owner: str, run_id: str) -> wire.TrainingRun:
        """The owner's run, or another tenant's run that has a public checkpoint."""
        with self._ctx.db.session() as s:
            row = s.get(TrainingRunRow, run_id)
            if row is None or (row.owner != owner and not self._has_public(s, run_id)):
                raise NotFound(f"training run {run_id!r} not found")
            return training_run_model(s, row)

    # -- checkpoints ------------------------------------------------------------------------

    def list_run_checkpoints(self, owner: str, run_id: str) -> wire.CheckpointsListResponse:
        with self._ctx.db.session() as s:
            run = s.get(TrainingRunRow, run_id)
            query = sa.select(CheckpointRow).where(CheckpointRow.run_id == run_id)
            if run is not None and run.owner != owner:
                query = query.where(CheckpointRow.public.is_(True))
            rows = s.scalars(query.order_by(CheckpointRow.time.desc(), CheckpointRow.pk.desc())).all()
            if run is None or (run.owner != owner and not rows):
                raise NotFound(f"training run {run_id!r} not found")
            return wire.CheckpointsListResponse(checkpoints=[checkpoint_model(r) for r in rows])

    def list_user_checkpoints(self, owner: str, limit: int, offset: int) -> wire.CheckpointsListResponse:
        limit, offset = page_bounds(limit, offset)
        with self._ctx.db.session() as s:
            where = CheckpointRow.owner == owner
            total = s.scalar(sa.select(sa.func.count()).select_from(CheckpointRow).where(where))
            rows = s.scalars(
                sa.select(CheckpointRow)
                .where(where)
                .order_by(CheckpointRow.time.desc(), CheckpointRow.pk.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return wire.CheckpointsListResponse(
                checkpoints=[checkpoint_model(r) for r in rows],
                cursor=wire.Cursor(offset=offset, limit=limit, total_count=int(total or 0)),
            )

    def _owned_checkpoint(self, s: sa.orm.Session, owner: str, run_id: str, checkpoint_id: str) -> CheckpointRow:
        ref = parse_checkpoint_id(run_id, checkpoint_id)
        owned_run(s, run_id, owner)
        row = find_checkpoint(s, ref)
        if row is None:
            raise NotFound(f"checkpoint {ref.tinker_path} not found")
        return row

    def delete(self, owner: str, run_id: str, checkpoint_id: str) -> None:
        with self._ctx.db.session() as s:
            row = self._owned_checkpoint(s, owner, run_id, checkpoint_id)
            ref = parse_checkpoint_id(run_id, checkpoint_id)
            s.delete(row)
        directory = checkpoint_dir(self._ctx.settings.checkpoints_dir, ref)
        if directory.exists():
            # Rename first so a half-deleted folder is never seen under the real name.
            trash = directory.with_name(f".deleted-{directory.name}-{uuid.uuid4().hex[:8]}")
            directory.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)

    def set_public(self, owner: str, run_id: str, checkpoint_id: str, public: bool) -> None:
        with self._ctx.db.session() as s:
            row = self._owned_checkpoint(s, owner, run_id, checkpoint_id)
            if row.public == public:
                state = "public" if public else "private"
                raise InvalidRequest(f"checkpoint {row.tinker_path} is already {state}")
            row.public = public

    def weights_info(self, owner: str, tinker_path: str) -> wire.WeightsInfoResponse:
        ref = parse_tinker_path(tinker_path)
        with self._ctx.db.session() as s:
            run, _row = readable_checkpoint(s, ref, owner)
            return wire.WeightsInfoResponse(base_model=run.base_model, is_lora=True, lora_rank=run.lora_rank)

    # -- archives ---------------------------------------------------------------------------

    def archive_link(self, owner: str, run_id: str, checkpoint_id: str, base_url: str) -> tuple[str, str]:
        """``(signed URL, Expires header)`` for downloading the checkpoint."""
        ref = parse_checkpoint_id(run_id, checkpoint_id)
        with self._ctx.db.session() as s:
            readable_checkpoint(s, ref, owner)
        token, expires = self._signer.sign(ref.run_id, ref.checkpoint_id, self._ctx.settings.archive_url_ttl_s)
        when = dt.datetime.fromtimestamp(expires, dt.timezone.utc)
        return f"{base_url.rstrip('/')}/api/v1/archives/{token}", email.utils.format_datetime(when, usegmt=True)

    def archive_file(self, token: str) -> tuple[pathlib.Path, str]:
        """Verify ``token`` and build the tar; returns ``(temp tar path, download file name)``."""
        signed = self._signer.verify(token)
        ref = parse_checkpoint_id(signed.run_id, signed.checkpoint_id)
        with self._ctx.db.session() as s:
            if find_checkpoint(s, ref) is None:
                raise NotFound(f"checkpoint {ref.tinker_path} no longer exists")
        directory = checkpoint_dir(self._ctx.settings.checkpoints_dir, ref)
        if not directory.is_dir():
            raise NotFound(f"the files of checkpoint {ref.tinker_path} are missing")
        path = build_tar(directory, self._ctx.settings.home / "tmp")
        filename = f"{ref.run_id}_{ref.kind}_{ref.name}.tar".replace(":", "_")
        return path, filename

"""Training runs and checkpoints as the REST endpoints show them.

Listing, deleting, publishing, expiry (TTL), weights info, archive links and the
per-file links of external exports. Only the run's owner may change a
checkpoint; public checkpoints can be read by anyone.

Expiry: a checkpoint past ``expires_at`` is invisible at once (see
``records.not_expired``); :meth:`CheckpointService.delete_expired`, run by the
sweeper, removes its row and then its folder, exactly as ``delete`` does.
Folder changes (a save writing a checkpoint and recording its row, a delete, an
expiry) hold :data:`FILES_LOCK`, so a save onto an expired name never loses its
new folder to the sweeper.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import os
import pathlib
import shutil
import threading
import time
import uuid
from typing import BinaryIO

import sqlalchemy as sa

from . import wire
from .archive import ArchiveSigner, SignedArchive, build_tar
from .context import Context
from .db import CheckpointRow, TrainingRunRow, as_utc, utcnow
from .errors import AccessDenied, InvalidRequest, NotFound
from .paths import CheckpointRef, checkpoint_dir, parse_checkpoint_id, parse_tinker_path
from .records import (
    checkpoint_model,
    find_checkpoint,
    newest_checkpoints,
    newest_owned,
    not_expired,
    owned_run,
    page_bounds,
    readable_checkpoint,
    training_run_model,
)

__all__ = ["FILES_LOCK", "MAX_TTL_S", "MIN_TTL_S", "CheckpointService", "expiry", "remove_folder", "validate_ttl"]

log = logging.getLogger(__name__)

MIN_TTL_S = 3600  # one hour
MAX_TTL_S = 10 * 365 * 24 * 3600  # ten years (of 365 days)
# Held while a checkpoint's folder and row change together (save, delete, expiry).
FILES_LOCK = threading.RLock()


def validate_ttl(ttl_seconds: int | None, field: str = "ttl_seconds") -> int | None:
    """``None`` (never expires) or a whole number of seconds from one hour to ten years."""
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not MIN_TTL_S <= ttl_seconds <= MAX_TTL_S:
        raise InvalidRequest(
            f"{field} must be between {MIN_TTL_S} (one hour) and {MAX_TTL_S} (ten years) seconds, "
            f"or null for a checkpoint that never expires; got {ttl_seconds!r}"
        )
    return ttl_seconds


def expiry(ttl_seconds: int | None, now: dt.datetime) -> dt.datetime | None:
    return now + dt.timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None


def remove_folder(directory: pathlib.Path) -> None:
    """Delete a checkpoint folder; renamed first so a half-deleted folder is never seen under its name."""
    if directory.exists():
        trash = directory.with_name(f".deleted-{directory.name}-{uuid.uuid4().hex[:8]}")
        directory.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


class CheckpointService:
    def __init__(self, ctx: Context, signer: ArchiveSigner) -> None:
        self._ctx = ctx
        self._signer = signer

    # -- runs -------------------------------------------------------------------------------

    def list_runs(self, owner: str, limit: int, offset: int) -> wire.TrainingRunsResponse:
        limit, offset = page_bounds(limit, offset)
        with self._ctx.db.session() as s:
            total, rows = newest_owned(s, TrainingRunRow, owner, limit, offset)
            runs = [training_run_model(s, row) for row in rows]
        return wire.TrainingRunsResponse(
            training_runs=runs, cursor=wire.Cursor(offset=offset, limit=limit, total_count=total)
        )

    def _has_public(self, s: sa.orm.Session, run_id: str) -> bool:
        return (
            s.scalars(
                sa.select(CheckpointRow.pk).where(
                    CheckpointRow.run_id == run_id, CheckpointRow.public.is_(True), not_expired()
                )
            ).first()
            is not None
        )

    def get_run(self, owner: str, run_id: str) -> wire.TrainingRun:
        """The owner's run; or, for another tenant, the public view of a run that has a
        public checkpoint: base model, LoRA rank and its newest *public* checkpoints (what
        ``create_training_client_from_state`` needs), never its private checkpoints, its
        ``user_metadata`` or its owner (see :func:`records.training_run_model`)."""
        with self._ctx.db.session() as s:
            row = s.get(TrainingRunRow, run_id)
            if row is None or (row.owner != owner and not self._has_public(s, run_id)):
                raise NotFound(f"training run {run_id!r} not found")
            return training_run_model(s, row, public_view=row.owner != owner)

    # -- checkpoints ------------------------------------------------------------------------

    def list_run_checkpoints(
        self, owner: str, run_id: str, *, include_external: bool = True
    ) -> wire.CheckpointsListResponse:
        """``include_external=False`` leaves out external exports, for clients older than
        0.28 whose ``Checkpoint`` model does not know the ``external`` type."""
        with self._ctx.db.session() as s:
            run = s.get(TrainingRunRow, run_id)
            query = sa.select(CheckpointRow).where(CheckpointRow.run_id == run_id, not_expired())
            if not include_external:
                query = query.where(CheckpointRow.checkpoint_type != "external")
            if run is not None and run.owner != owner:
                query = query.where(CheckpointRow.public.is_(True))
            rows = s.scalars(query.order_by(CheckpointRow.time.desc(), CheckpointRow.pk.desc())).all()
            if run is None or (run.owner != owner and not rows):
                raise NotFound(f"training run {run_id!r} not found")
            return wire.CheckpointsListResponse(checkpoints=[checkpoint_model(r) for r in rows])

    def list_user_checkpoints(
        self, owner: str, limit: int, offset: int, *, include_external: bool = True
    ) -> wire.CheckpointsListResponse:
        limit, offset = page_bounds(limit, offset)
        with self._ctx.db.session() as s:
            where = sa.and_(CheckpointRow.owner == owner, not_expired())
            if not include_external:
                where = sa.and_(where, CheckpointRow.checkpoint_type != "external")
            total, rows = newest_checkpoints(s, where, limit, offset)
            return wire.CheckpointsListResponse(
                checkpoints=[checkpoint_model(r) for r in rows],
                cursor=wire.Cursor(offset=offset, limit=limit, total_count=total),
            )

    def _owned_checkpoint(self, s: sa.orm.Session, owner: str, run_id: str, checkpoint_id: str) -> CheckpointRow:
        ref = parse_checkpoint_id(run_id, checkpoint_id)
        owned_run(s, run_id, owner)
        row = find_checkpoint(s, ref)
        if row is None:
            raise NotFound(f"checkpoint {ref.tinker_path} not found")
        return row

    def delete(self, owner: str, run_id: str, checkpoint_id: str) -> None:
        with FILES_LOCK:
            with self._ctx.db.session() as s:
                row = self._owned_checkpoint(s, owner, run_id, checkpoint_id)
                ref = parse_checkpoint_id(run_id, checkpoint_id)
                s.delete(row)
            remove_folder(checkpoint_dir(self._ctx.settings.checkpoints_dir, ref))

    def set_public(self, owner: str, run_id: str, checkpoint_id: str, public: bool) -> None:
        with self._ctx.db.session() as s:
            row = self._owned_checkpoint(s, owner, run_id, checkpoint_id)
            if row.public == public:
                state = "public" if public else "private"
                raise InvalidRequest(f"checkpoint {row.tinker_path} is already {state}")
            row.public = public

    def set_ttl(self, owner: str, run_id: str, checkpoint_id: str, ttl_seconds: int | None) -> wire.Checkpoint:
        """Expire the checkpoint ``ttl_seconds`` from now, or never (``None``)."""
        validate_ttl(ttl_seconds)
        with self._ctx.db.session() as s:
            row = self._owned_checkpoint(s, owner, run_id, checkpoint_id)
            row.expires_at = expiry(ttl_seconds, utcnow())
            s.flush()
            return checkpoint_model(row)

    def delete_expired(self, now: dt.datetime | None = None) -> int:
        """Remove every checkpoint whose expiry has passed (row, then folder); returns how many."""
        now = now or utcnow()
        with self._ctx.db.session() as s:
            due = s.scalars(
                sa.select(CheckpointRow.pk).where(
                    CheckpointRow.expires_at.is_not(None), CheckpointRow.expires_at <= now
                )
            ).all()
        removed = 0
        for pk in due:
            with FILES_LOCK:
                with self._ctx.db.session() as s:
                    row = s.get(CheckpointRow, pk)
                    # A save or PUT .../ttl may have renewed it since the query above.
                    if row is None or row.expires_at is None or as_utc(row.expires_at) > now:
                        continue
                    ref = parse_checkpoint_id(row.run_id, row.checkpoint_id)
                    s.delete(row)
                try:
                    remove_folder(checkpoint_dir(self._ctx.settings.checkpoints_dir, ref))
                except OSError:
                    log.exception("could not remove the folder of expired checkpoint %s", ref.tinker_path)
            removed += 1
            log.info("checkpoint %s expired and was deleted", ref.tinker_path)
        return removed

    def weights_info(self, owner: str, tinker_path: str) -> wire.WeightsInfoResponse:
        ref = parse_tinker_path(tinker_path)
        with self._ctx.db.session() as s:
            run, _row = readable_checkpoint(s, ref, owner)
            return wire.WeightsInfoResponse(base_model=run.base_model, is_lora=True, lora_rank=run.lora_rank)

    # -- archives ---------------------------------------------------------------------------

    def archive_link(self, owner: str, run_id: str, checkpoint_id: str, base_url: str) -> tuple[str, str]:
        """``(signed URL, Expires header)`` for downloading the checkpoint: bound to its
        current content and, for a non-owner, to its publication (see ``archive.py``)."""
        ref = parse_checkpoint_id(run_id, checkpoint_id)
        with self._ctx.db.session() as s:
            run, row = readable_checkpoint(s, ref, owner)
            content, public = content_of(row), run.owner != owner
        token, expires = self._signer.sign(
            ref.run_id, ref.checkpoint_id, self._ctx.settings.archive_url_ttl_s, content=content, public=public
        )
        when = dt.datetime.fromtimestamp(expires, dt.UTC)
        return f"{base_url.rstrip('/')}/api/v1/archives/{token}", email.utils.format_datetime(when, usegmt=True)

    def _signed_folder(self, token: str, *, file_link: bool) -> tuple[CheckpointRef, pathlib.Path, str | None]:
        """Verify ``token`` (403) and find its checkpoint's folder (404 once deleted or expired)."""
        signed = self._signer.verify(token)
        if (signed.file is not None) != file_link:
            raise AccessDenied("invalid download link: " + ("not a file link" if file_link else "not an archive link"))
        if signed.content is None:
            raise AccessDenied("invalid download link: it names no checkpoint content; request a new one")
        try:
            ref = parse_checkpoint_id(signed.run_id, signed.checkpoint_id)
        except InvalidRequest:
            raise AccessDenied("invalid download link") from None
        self._check_signed(ref, signed)
        directory = checkpoint_dir(self._ctx.settings.checkpoints_dir, ref)
        if not directory.is_dir():
            raise NotFound(f"the files of checkpoint {ref.tinker_path} are missing")
        return ref, directory, signed.file

    def _check_signed(self, ref: CheckpointRef, signed: SignedArchive) -> None:
        """404 unless the checkpoint still holds the content the link was made for (same
        row, same save) and, for a link made because it was public, is still public."""
        with self._ctx.db.session() as s:
            row = find_checkpoint(s, ref)
            if row is None or content_of(row) != signed.content or (signed.public and not row.public):
                raise NotFound(
                    f"checkpoint {ref.tinker_path} no longer holds what this link was made for "
                    "(it was deleted, overwritten, expired or unpublished); request a new link"
                )

    def archive_file(self, token: str) -> tuple[pathlib.Path, str]:
        """Verify ``token`` and build the tar; returns ``(temp tar path, download file name)``."""
        ref, directory, _file = self._signed_folder(token, file_link=False)
        signed = self._signer.verify(token)
        path = build_tar(directory, self._ctx.settings.home / "tmp")
        try:
            # A save writes the folder and its row under FILES_LOCK: the row still naming
            # the link's content after the tar was built means the tar holds that content.
            with FILES_LOCK:
                self._check_signed(ref, signed)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        filename = f"{ref.run_id}_{ref.kind}_{ref.name}.tar".replace(":", "_")
        return path, filename

    # -- external exports -------------------------------------------------------------------

    def external_urls(
        self, owner: str, run_id: str, checkpoint_id: str, base_url: str
    ) -> wire.ExternalWeightsUrlsResponse:
        """One signed, expiring URL per file of an external export (``external_weights/<name>``)."""
        ref = parse_checkpoint_id(run_id, checkpoint_id)
        if ref.kind != "external_weights":
            raise InvalidRequest(
                f"{ref.tinker_path} is not an external export: only external_weights/<name> checkpoints "
                "(made by save_weights_external) have per-file URLs"
            )
        with self._ctx.db.session() as s:
            run, row = readable_checkpoint(s, ref, owner)
            content, public = content_of(row), run.owner != owner
        directory = checkpoint_dir(self._ctx.settings.checkpoints_dir, ref)
        files = export_files(directory)
        if not files:
            raise NotFound(f"the files of checkpoint {ref.tinker_path} are missing")
        ttl_s = self._ctx.settings.archive_url_ttl_s
        now = time.time()
        urls: dict[str, str] = {}
        expires = now + ttl_s
        for name in files:
            token, expires = self._signer.sign(
                ref.run_id, ref.checkpoint_id, ttl_s, now, file=name, content=content, public=public
            )
            urls[name] = f"{base_url.rstrip('/')}/api/v1/external_files/{token}"
        return wire.ExternalWeightsUrlsResponse(urls=urls, expires=dt.datetime.fromtimestamp(expires, dt.UTC))

    def external_file(self, token: str) -> tuple[BinaryIO, int, str]:
        """The one file a signed external-export link names, opened (``(file, size, name)``);
        it never leaves the export's folder. The file is opened, then the checkpoint is
        checked again under ``FILES_LOCK``: an overwrite replaces the folder, so the open
        file is the content the link names."""
        path = self._external_path(token)
        signed = self._signer.verify(token)
        ref = parse_checkpoint_id(signed.run_id, signed.checkpoint_id)
        handle = path.open("rb")
        try:
            with FILES_LOCK:
                self._check_signed(ref, signed)
            size = os.fstat(handle.fileno()).st_size
        except BaseException:
            handle.close()
            raise
        return handle, size, path.name

    def _external_path(self, token: str) -> pathlib.Path:
        ref, directory, name = self._signed_folder(token, file_link=True)
        assert name is not None
        root = directory.resolve()
        path = (directory / name).resolve()
        if (
            name.startswith("/")
            or "\\" in name
            or any(part in ("", ".", "..") for part in name.split("/"))
            or root not in path.parents
        ):
            raise AccessDenied("invalid download link: the file is outside the export")
        candidate = directory / name
        if candidate.is_symlink() or not path.is_file():
            raise NotFound(f"{name} is not a file of checkpoint {ref.tinker_path}")
        return path


def content_of(row: CheckpointRow) -> tuple[int, int]:
    """What a signed link binds to: the row's key and its save time in microseconds (a new
    save of the same name, or a new checkpoint after a delete, changes one of them)."""
    saved = as_utc(row.time)
    return int(row.pk), int(saved.timestamp()) * 1_000_000 + saved.microsecond


def export_files(directory: pathlib.Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``directory`` (symlinks and dot-files skipped)."""
    if not directory.is_dir():
        return []
    names = []
    for item in sorted(directory.rglob("*")):
        relative = item.relative_to(directory)
        if item.is_symlink() or not item.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        names.append(relative.as_posix())
    return names

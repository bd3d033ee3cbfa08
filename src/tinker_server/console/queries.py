"""The console's read side: paginated, tenant-scoped queries that build the views.

Every lookup goes through the owner: another tenant's run reads as missing (404),
exactly as in the REST API. Lists are paginated with ``offset``/``limit`` and a
total, and each page costs a fixed number of queries (no query per row).
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..checkpoints import CheckpointService
from ..db import CheckpointRow, Database, SamplerActivityRow, SamplerRow, SessionRow, TrainingRunRow, as_utc
from ..errors import InvalidRequest
from ..records import newest_checkpoints, newest_owned, not_expired, owned_run, page_bounds
from ..run_metrics import RunMetrics, load_points, load_series
from ..scheduler import Scheduler
from .views import (
    CheckpointView,
    DownloadLink,
    MetricPoints,
    MetricSeries,
    ModelQueue,
    Page,
    PlaygroundChoice,
    PlaygroundModels,
    QueueView,
    RunDetail,
    RunsPage,
    RunSummary,
    SamplerActivity,
    SessionsPage,
    SessionView,
)

__all__ = ["MAX_PAGE", "ConsoleQueries"]

MAX_PAGE = 200  # the largest page any console list answers
PLAYGROUND_CHECKPOINTS = 200  # newest sampler checkpoints offered in the playground
MAX_POINTS_PAGE = 10_000  # steps per page of one series at full resolution


def _bounds(limit: int, offset: int) -> tuple[int, int]:
    limit, offset = page_bounds(limit, offset)
    if limit > MAX_PAGE:
        raise InvalidRequest(f"limit must be at most {MAX_PAGE}, got {limit}")
    return limit, offset


def _summary(run: TrainingRunRow, checkpoints: int) -> RunSummary:
    if run.corrupted:
        status, reason = "corrupted", run.unloaded_reason
    elif run.unloaded_reason is not None:
        status, reason = "unloaded", run.unloaded_reason
    else:
        status, reason = "active", None
    return RunSummary(
        run_id=run.id,
        session_id=run.session_id,
        base_model=run.base_model,
        lora_rank=run.lora_rank,
        created_at=as_utc(run.created_at),
        last_activity=as_utc(run.last_request_time),
        status=status,  # type: ignore[arg-type]
        status_reason=reason,
        checkpoints=checkpoints,
    )


def _checkpoint_counts(s: Session, run_ids: list[str]) -> dict[str, int]:
    if not run_ids:
        return {}
    rows = s.execute(
        sa.select(CheckpointRow.run_id, sa.func.count())
        .where(CheckpointRow.run_id.in_(run_ids), not_expired())
        .group_by(CheckpointRow.run_id)
    ).all()
    return {run_id: int(n) for run_id, n in rows}


def _checkpoint_view(row: CheckpointRow) -> CheckpointView:
    return CheckpointView(
        checkpoint_id=row.checkpoint_id,
        checkpoint_type=row.checkpoint_type,
        name=row.checkpoint_id.split("/", 1)[-1],
        tinker_path=row.tinker_path,
        size_bytes=row.size_bytes,
        time=as_utc(row.time),
        expires_at=as_utc(row.expires_at) if row.expires_at is not None else None,
        public=row.public,
    )


class ConsoleQueries:
    def __init__(
        self,
        db: Database,
        scheduler: Scheduler,
        run_metrics: RunMetrics,
        checkpoints: CheckpointService,
    ) -> None:
        self._db = db
        self._scheduler = scheduler
        self._run_metrics = run_metrics
        self._checkpoints = checkpoints

    # -- runs -------------------------------------------------------------------------------

    def runs_page(self, owner: str, offset: int = 0, limit: int = 25) -> RunsPage:
        limit, offset = _bounds(limit, offset)
        with self._db.session() as s:
            total, rows = newest_owned(s, TrainingRunRow, owner, limit, offset)
            counts = _checkpoint_counts(s, [row.id for row in rows])
            runs = [_summary(row, counts.get(row.id, 0)) for row in rows]
        return RunsPage(runs=runs, page=Page(offset=offset, limit=limit, total=total))

    def run_detail(
        self, owner: str, run_id: str, checkpoints_offset: int = 0, checkpoints_limit: int = 20
    ) -> RunDetail:
        limit, offset = _bounds(checkpoints_limit, checkpoints_offset)
        with self._db.session() as s:
            run = owned_run(s, run_id, owner)
            where = sa.and_(CheckpointRow.run_id == run_id, not_expired())
            total, checkpoints = newest_checkpoints(s, where, limit, offset)
            series = load_series(s, run_id)
            sampling = self._sampling(s, owner, run_id)
            return RunDetail(
                run=_summary(run, total),
                lora_config=dict(run.lora_config),
                user_metadata=run.user_metadata,
                metrics_x=series.x,  # type: ignore[arg-type]
                metrics_bucket=series.bucket,
                metrics=[
                    MetricSeries(kind=x.kind, name=x.name, steps=x.steps, values=x.values, lows=x.lows, highs=x.highs)
                    for x in series.series
                ],
                sampling=sampling,
                checkpoints=[_checkpoint_view(row) for row in checkpoints],
                checkpoints_page=Page(offset=offset, limit=limit, total=total),
            )

    def metric_points(self, owner: str, run_id: str, kind: str, name: str, after: int, limit: int) -> MetricPoints:
        if not 1 <= limit <= MAX_POINTS_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_POINTS_PAGE}, got {limit}")
        with self._db.session() as s:
            owned_run(s, run_id, owner)
            x, series = load_points(s, run_id, kind, name, after, limit)
        steps = [int(v) for v in series.steps]
        return MetricPoints(
            x=x,  # type: ignore[arg-type]
            kind=kind,
            name=name,
            steps=steps,
            values=series.values,
            next_after=steps[-1] if len(steps) == limit else None,
        )

    def _sampling(self, s: Session, owner: str, run_id: str) -> list[SamplerActivity]:
        rows = s.execute(
            sa.select(SamplerActivityRow, SamplerRow.model_path, SamplerRow.source_run_id)
            .outerjoin(SamplerRow, SamplerRow.id == SamplerActivityRow.sampler_id)
            .where(SamplerActivityRow.run_id == run_id, SamplerActivityRow.owner == owner)
            .order_by(SamplerActivityRow.last_time.desc())
            .limit(MAX_PAGE)
        ).all()
        out = []
        for activity, model_path, source_run in rows:
            source: Literal["checkpoint", "ephemeral", "base model"] = (
                "ephemeral" if source_run is not None else "checkpoint" if model_path is not None else "base model"
            )
            out.append(
                SamplerActivity(
                    sampler_id=activity.sampler_id,
                    source=source,
                    model_path=model_path,
                    requests=activity.requests,
                    sequences=activity.sequences,
                    tokens=activity.tokens,
                    first_time=as_utc(activity.first_time),
                    last_time=as_utc(activity.last_time),
                )
            )
        return out

    def download_link(self, owner: str, run_id: str, checkpoint_id: str, base_url: str) -> DownloadLink:
        """The signed archive URL of ``GET …/checkpoints/{id}/archive``, as JSON (a page's
        ``fetch`` cannot read a redirect's target)."""
        url, expires = self._checkpoints.archive_link(owner, run_id, checkpoint_id, base_url)
        return DownloadLink(url=url, expires=expires)

    # -- sessions ---------------------------------------------------------------------------

    def sessions_page(self, owner: str, offset: int = 0, limit: int = 25) -> SessionsPage:
        limit, offset = _bounds(limit, offset)
        with self._db.session() as s:
            total, rows = newest_owned(s, SessionRow, owner, limit, offset)
            ids = [row.id for row in rows]
            runs: dict[str, list[str]] = {}
            samplers: dict[str, int] = {}
            if ids:
                for session_id, run_id in s.execute(
                    sa.select(TrainingRunRow.session_id, TrainingRunRow.id)
                    .where(TrainingRunRow.session_id.in_(ids))
                    .order_by(TrainingRunRow.model_seq_id)
                ):
                    runs.setdefault(session_id, []).append(run_id)
                for session_id, n in s.execute(
                    sa.select(SamplerRow.session_id, sa.func.count())
                    .where(SamplerRow.session_id.in_(ids))
                    .group_by(SamplerRow.session_id)
                ):
                    samplers[session_id] = int(n)
            sessions = [
                SessionView(
                    session_id=row.id,
                    status="finished" if row.finished_reason is not None else "expired" if row.expired else "alive",
                    finished_reason=row.finished_reason,
                    display_name=row.display_name,
                    sdk_version=row.sdk_version,
                    created_at=as_utc(row.created_at),
                    last_heartbeat=as_utc(row.last_heartbeat),
                    runs=runs.get(row.id, []),
                    samplers=samplers.get(row.id, 0),
                )
                for row in rows
            ]
        return SessionsPage(sessions=sessions, page=Page(offset=offset, limit=limit, total=total))

    # -- queue ------------------------------------------------------------------------------

    def queue(self) -> QueueView:
        models = []
        for name in self._scheduler.models:
            snap = self._scheduler.worker(name).snapshot()
            rate = self._run_metrics.throughput(name)
            models.append(
                ModelQueue(
                    base_model=name,
                    loaded=snap.loaded,
                    waiting_training=snap.waiting_training,
                    waiting_samples=snap.waiting_samples,
                    running=snap.running,
                    train_tokens_per_s=round(rate.train_tokens_per_s, 2),
                    sampled_tokens_per_s=round(rate.sampled_tokens_per_s, 2),
                    window_s=rate.window_s,
                )
            )
        return QueueView(models=models)

    # -- playground -------------------------------------------------------------------------

    def playground_models(self, owner: str) -> PlaygroundModels:
        """The served base models and the owner's newest sampler checkpoints."""
        with self._db.session() as s:
            rows = s.execute(
                sa.select(
                    CheckpointRow.tinker_path,
                    CheckpointRow.run_id,
                    CheckpointRow.checkpoint_id,
                    CheckpointRow.time,
                    TrainingRunRow.base_model,
                )
                .join(TrainingRunRow, TrainingRunRow.id == CheckpointRow.run_id)
                .where(CheckpointRow.owner == owner, CheckpointRow.checkpoint_type == "sampler", not_expired())
                .order_by(CheckpointRow.time.desc(), CheckpointRow.pk.desc())
                .limit(PLAYGROUND_CHECKPOINTS)
            ).all()
        served = set(self._scheduler.models)
        choices = [
            PlaygroundChoice(
                tinker_path=path,
                run_id=run_id,
                name=checkpoint_id.split("/", 1)[-1],
                base_model=base,
                time=as_utc(time),
            )
            for path, run_id, checkpoint_id, time, base in rows
            if base in served
        ]
        return PlaygroundModels(base_models=list(self._scheduler.models), checkpoints=choices)

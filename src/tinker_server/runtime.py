"""The server's long-lived parts, built from settings: database, futures,
scheduler and services; startup recovery and the background sweeper."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from .archive import ArchiveSigner
from .auth import Authenticator, KeyStore, check_bind, is_loopback
from .catalog import Catalog
from .checkpoints import CheckpointService
from .context import Context
from .db import Database, SamplerRow, TrainingRunRow, utcnow
from .engine.api import Evicted
from .engine.host import LocalEngine
from .engine.process import ProcessEngine, WorkerSpec
from .engine.residency import ResidencyLimits
from .futures import FutureHub
from .oai import OaiService
from .run_metrics import RunMetrics
from .sampling import SamplingService
from .scheduler import HandleFactory, Limits, Scheduler
from .sessions import SessionService
from .settings import Settings
from .tenants import DatabaseTenants
from .training import TrainingService
from .usage import UsageRecorder

__all__ = [
    "EngineLoader",
    "Runtime",
    "default_engine_loader",
    "handle_factory",
    "remove_checkpoint_leftovers",
    "worker_spec",
]

log = logging.getLogger(__name__)

EngineLoader = Callable[[str], Any]  # base model name -> an in-process EngineCore (tests, benchmarks)
RESTART_REASON = "the server restarted"

# Hidden folders a save or a delete leaves beside a checkpoint when the process dies midway
# (engine/checkpoint.py writes ``.<name>.tmp-<hex>`` and renames it into place, moving a replaced
# checkpoint to ``.<name>.old-<hex>`` first; checkpoints.py renames a deleted one to
# ``.deleted-<name>-<hex>`` before removing it). Checkpoint names never start with a dot.
_TMP_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]+$")
_OLD_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.old-[0-9a-f]+$")
_DELETED_LEFTOVER = re.compile(r"^\.deleted-.+-[0-9a-f]+$")


def residency_limits(settings: Settings) -> ResidencyLimits:
    mib = settings.sampler_memory_mib
    return ResidencyLimits(
        max_samplers=max(settings.max_checkpoint_samplers, 2 * settings.max_sample_batch),
        snapshots_per_source=settings.snapshots_per_run,
        max_sampler_bytes=None if mib is None else int(mib * 2**20),
    )


def worker_spec(settings: Settings, model_name: str) -> WorkerSpec:
    return WorkerSpec(
        model_name=model_name,
        home=str(settings.home),
        device=settings.device,
        dtype=settings.dtype,
        max_tokens_per_microbatch=settings.max_tokens_per_microbatch,
        packed_weights=settings.packed_weights,
        torch_threads=settings.torch_threads,
        residency=residency_limits(settings),
    )


def default_engine_loader(settings: Settings) -> EngineLoader:
    """Load served models with the real engine in this process, configured from ``settings``."""

    def load(model_name: str) -> Any:
        from .engine.worker import load_host

        return load_host(worker_spec(settings, model_name)).core

    return load


def handle_factory(settings: Settings, engine_loader: EngineLoader | None = None) -> HandleFactory:
    """How each served model's engine is run: ``engine_loader`` in this process when given
    (tests), else a worker process per model (``engine_process``, the default) or the real
    engine in this process."""
    limits = residency_limits(settings)
    if engine_loader is None and settings.engine_process:
        return lambda name: ProcessEngine(worker_spec(settings, name))
    loader = engine_loader or default_engine_loader(settings)
    return lambda name: LocalEngine(lambda: loader(name), limits)


def check_models(settings: Settings) -> None:
    """Every served model must be known to the engine, a local model directory or a hub id in
    the Hugging Face cache; a directory's architecture is checked from its config (in a
    subprocess: this process imports no transformers), so an unsupported one is refused at
    startup with a sentence naming it."""
    from .engine.names import known_models, model_directory

    known = set(known_models())
    directories = {m: model_directory(m) for m in settings.models if m not in known}
    unknown = [m for m, path in directories.items() if path is None]
    if unknown:
        raise ValueError(
            f"models: unknown model(s) {', '.join(unknown)}; known models: {', '.join(sorted(known))} "
            "(or give a local model directory, or a hub id in the Hugging Face cache)"
        )
    for name, path in directories.items():
        checked = subprocess.run(
            [sys.executable, "-m", "tinker_server.engine.worker", "--check", str(path)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if checked.returncode != 0:
            reason = (checked.stderr.strip().splitlines() or ["the check failed"])[-1]
            raise ValueError(f"models: {name} cannot be served: {reason}")


def remove_checkpoint_leftovers(root: pathlib.Path) -> int:
    """Remove the half-written and half-deleted checkpoint folders a killed process left under
    ``root`` (``home/checkpoints/<run>/<kind>/<name>``); returns how many were removed.

    A checkpoint being replaced when the process died may exist only as its ``.old-`` folder
    (moved away, the new one not yet moved in): that folder is the checkpoint the database
    still describes, so it is moved back instead. Run at startup, before any save can begin.
    """
    if not root.is_dir():
        return 0
    removed = restored = 0
    for run_dir in _subdirs(root):
        for kind_dir in _subdirs(run_dir):
            entries = _subdirs(kind_dir)
            for entry in entries:
                old = _OLD_LEFTOVER.match(entry.name)
                target = kind_dir / old.group("name") if old else None
                if target is not None and not target.exists():
                    os.rename(entry, target)
                    restored += 1
            for entry in _subdirs(kind_dir):
                if any(p.match(entry.name) for p in (_TMP_LEFTOVER, _OLD_LEFTOVER, _DELETED_LEFTOVER)):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
    if removed or restored:
        log.warning(
            "startup: removed %d half-written or half-deleted checkpoint folder(s) under %s%s",
            removed,
            root,
            f"; restored {restored} checkpoint(s) interrupted while being replaced" if restored else "",
        )
    return removed


def _subdirs(path: pathlib.Path) -> list[pathlib.Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


class Runtime:
    def __init__(self, settings: Settings, engine_loader: EngineLoader | None = None) -> None:
        if engine_loader is None:
            check_models(settings)
        self.settings = settings
        self.db = Database(settings.resolved_database_url)
        # API keys (auth.py): a non-loopback bind needs an issued key, else startup stops here.
        self.keys = KeyStore(self.db)
        check_bind(settings.host, self.keys, settings.home)
        self.auth = Authenticator(self.keys, issued_only=not is_loopback(settings.host))
        self.tenants = DatabaseTenants(self.db)  # issued keys' quotas; other owners unlimited
        self.futures = FutureHub(self.db)
        self.run_metrics = RunMetrics(self.db)  # per-run metrics, written as results are stored
        self.futures.on_resolved.append(self.run_metrics.record)
        self.futures.on_resolved.append(UsageRecorder().record)  # per-tenant tokens (usage.py)
        self.scheduler = Scheduler(
            settings.models,
            handle_factory(settings, engine_loader),
            self.futures,
            Limits(
                max_pending=settings.max_pending_requests,
                max_pending_samples=settings.max_pending_samples,
                max_sample_batch=settings.max_sample_batch,
                sample_batch_window_s=settings.sample_batch_window_s,
                max_tokens_per_round=settings.effective_max_tokens_per_round,
            ),
        )
        self.scheduler.on_evicted = self._record_evictions
        self.scheduler.on_lost = self._record_lost_engine
        ctx = Context(
            settings=settings, db=self.db, futures=self.futures, scheduler=self.scheduler, tenants=self.tenants
        )
        self.sessions = SessionService(ctx)
        self.training = TrainingService(ctx)
        self.sampling = SamplingService(ctx)
        self.catalog = Catalog(ctx)
        self.oai = OaiService(ctx, self.catalog)  # the OpenAI-compatible endpoints
        self.checkpoints = CheckpointService(ctx, ArchiveSigner(settings.home / "archive_secret"))
        self._started = False
        self._start_lock = threading.Lock()

    def ensure_started(self) -> None:
        """Create the home folder and tables and recover from a previous run (once)."""
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            self.settings.home.mkdir(parents=True, exist_ok=True)
            self.settings.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            self.db.create_tables()
            self._recover()
            remove_checkpoint_leftovers(self.settings.checkpoints_dir)
            self._started = True
            if self.settings.preload_models:
                self.scheduler.warm()

    def _record_evictions(self, base_model: str, events: list[Evicted]) -> None:
        """Snapshot samplers the engine evicted are gone for good; checkpoint samplers reload."""
        with self.db.session() as s:
            for event in events:
                s.execute(
                    sa.update(SamplerRow)
                    .where(
                        SamplerRow.id == event.adapter_id,
                        SamplerRow.model_path.is_(None),
                        SamplerRow.unloaded_reason.is_(None),
                    )
                    .values(unloaded_reason=event.reason)
                )

    def _record_lost_engine(self, base_model: str, reason: str) -> None:
        """The engine of ``base_model`` lost its adapters: its runs and snapshot samplers are
        unloaded (runs resume from their checkpoints)."""
        with self.db.session() as s:
            s.execute(
                sa.update(TrainingRunRow)
                .where(TrainingRunRow.base_model == base_model, TrainingRunRow.unloaded_reason.is_(None))
                .values(unloaded_reason=reason)
            )
            s.execute(
                sa.update(SamplerRow)
                .where(
                    SamplerRow.base_model == base_model,
                    SamplerRow.unloaded_reason.is_(None),
                    SamplerRow.has_adapter,
                    SamplerRow.model_path.is_(None),
                )
                .values(unloaded_reason=reason)
            )

    def _recover(self) -> None:
        """Nothing is in engine memory after a restart: mark what was lost."""
        failed = self.futures.fail_pending_after_restart()
        with self.db.session() as s:
            runs = s.execute(
                sa.update(TrainingRunRow)
                .where(TrainingRunRow.unloaded_reason.is_(None))
                .values(unloaded_reason=RESTART_REASON)
            )
            samplers = s.execute(
                sa.update(SamplerRow)
                .where(SamplerRow.unloaded_reason.is_(None), SamplerRow.has_adapter, SamplerRow.model_path.is_(None))
                .values(unloaded_reason=RESTART_REASON)
            )
        n_runs = int(getattr(runs, "rowcount", 0) or 0)
        n_samplers = int(getattr(samplers, "rowcount", 0) or 0)
        if failed or n_runs or n_samplers:
            log.info(
                "recovered after restart: %d pending request(s) failed, %d run(s) and %d sampler(s) unloaded",
                failed,
                n_runs,
                n_samplers,
            )

    def sweep_once(self) -> None:
        self.sessions.expire_stale()
        self.training.fail_stalled()
        self.futures.purge_finished_before(utcnow() - dt.timedelta(seconds=self.settings.future_retention_s))
        self.checkpoints.delete_expired()  # checkpoints past their ttl: row, then folder
        self.run_metrics.enforce_retention()

    async def run_sweeper(self) -> None:
        interval = self.settings.effective_sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.sweep_once)
            except Exception:  # the sweeper must keep running
                log.exception("session sweep failed")

    def stop(self) -> None:
        self.scheduler.stop()
        self.db.dispose()

"""Sampling sessions and sampling requests.

A sampler is one of:

* a base-model sampler (``base_model`` only): no adapter;
* a checkpoint sampler (``model_path``): the checkpoint's adapter, loaded under
  the sampler's id; reloaded from disk on demand if it left memory (session
  expiry, restart, or eviction: at most ``max_checkpoint_samplers`` of them stay
  loaded per base model, least recently used first out);
* an ephemeral sampler (``save_weights_for_sampler`` without a name): a
  weights-only copy of a training run's adapter, held in memory only.

Checkpoint adapters are loaded and evicted in one place, :meth:`SamplingService.checkpoint_loader`,
which the OpenAI-compatible endpoints (:mod:`.oai`) use too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import wire
from .context import Context
from .convert import sample_job, sample_result
from .db import SamplerRow, utcnow
from .errors import Gone, InvalidRequest, NotFound
from .paths import checkpoint_dir, parse_tinker_path
from .records import owned_sampler, owned_session, readable_checkpoint
from .scheduler import CallTask, SampleTask

__all__ = ["SamplingService"]


class SamplingService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._creating: dict[str, concurrent.futures.Future[Any]] = {}
        # Checkpoint samplers loaded in each base model's engine, least recently used first.
        self._loaded: dict[str, OrderedDict[str, None]] = {}
        self._kept = max(ctx.settings.max_checkpoint_samplers, 2 * ctx.settings.max_sample_batch)

    def _touch(self, engine: Any, base_model: str, sampler_id: str) -> None:
        """Mark a checkpoint sampler as used; unload the least recently used beyond the cap.

        Runs in the worker thread. Samplers of the batch being prepared were all
        touched within the last ``max_sample_batch`` touches, so they are never evicted.
        """
        with self._lock:
            loaded = self._loaded.setdefault(base_model, OrderedDict())
            loaded[sampler_id] = None
            loaded.move_to_end(sampler_id)
            victims = []
            while len(loaded) > self._kept:
                victims.append(loaded.popitem(last=False)[0])
        for victim in victims:
            if engine.has_adapter(victim):
                engine.drop_adapter(victim)

    def checkpoint_loader(
        self,
        adapter_id: str,
        base_model: str,
        directory: pathlib.Path,
        on_load: Callable[[], None] | None = None,
    ) -> Callable[[Any], None]:
        """A ``SampleTask.prepare`` for a checkpoint's adapter held under ``adapter_id``:
        loads it from ``directory`` unless it is in memory (then calls ``on_load``) and marks
        it used, so at most ``max_checkpoint_samplers`` such adapters stay loaded."""

        def prepare(engine: Any) -> None:
            if not engine.has_adapter(adapter_id):
                engine.load_adapter(adapter_id, directory, optimizer=False)
                if on_load is not None:
                    on_load()
            self._touch(engine, base_model, adapter_id)

        return prepare

    async def create_sampling_session(
        self, owner: str, req: wire.CreateSamplingSessionRequest
    ) -> wire.CreateSamplingSessionResponse:
        ctx = self._ctx
        sampler_id = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        with self._lock, ctx.db.session() as s:
            session_row = owned_session(s, req.session_id, owner)
            if s.get(SamplerRow, sampler_id) is not None:
                return wire.CreateSamplingSessionResponse(sampling_session_id=sampler_id)
            pending = self._creating.get(sampler_id)
            if pending is None:
                model_path = req.model_path
                if model_path is not None:
                    ref = parse_tinker_path(model_path)
                    run, _row = readable_checkpoint(s, ref, owner)
                    base_model = run.base_model
                    if req.base_model is not None and req.base_model != base_model:
                        raise InvalidRequest(
                            f"base_model {req.base_model!r} does not match {model_path}, trained on {base_model}"
                        )
                    directory = checkpoint_dir(ctx.settings.checkpoints_dir, ref)
                elif req.base_model is not None:
                    base_model = req.base_model
                    directory = None
                else:
                    raise InvalidRequest("create_sampling_session needs a base_model or a model_path")
                worker = ctx.scheduler.worker(base_model)
                session_row.expired = False
                session_row.last_heartbeat = utcnow()
                row = SamplerRow(
                    id=sampler_id,
                    owner=owner,
                    session_id=req.session_id,
                    base_model=base_model,
                    model_path=model_path,
                    has_adapter=directory is not None,
                    created_at=utcnow(),
                )

                def load(engine: Any, directory: Any = directory, base_model: str = base_model) -> None:
                    if directory is not None:
                        engine.load_adapter(sampler_id, directory, optimizer=False)
                        self._touch(engine, base_model, sampler_id)

                def record(_: Any, row: SamplerRow = row) -> None:
                    with ctx.db.session() as s2:
                        s2.merge(row)

                task = worker.submit(CallTask(fn=load, on_result=record))
                pending = self._creating[sampler_id] = task.done
        try:
            await asyncio.wrap_future(pending)
        finally:
            with self._lock:
                if self._creating.get(sampler_id) is pending:
                    del self._creating[sampler_id]
        return wire.CreateSamplingSessionResponse(sampling_session_id=sampler_id)

    def asample(self, owner: str, req: wire.SampleRequest, *, backpressure: bool) -> wire.UntypedAPIFuture:
        ctx = self._ctx
        if req.sampling_session_id is None:
            raise InvalidRequest(
                "asample needs a sampling_session_id; create one with create_sampling_session "
                "(the legacy base_model/model_path fields are not supported)"
            )
        sampler_id = req.sampling_session_id
        with ctx.db.session() as s:
            sampler = owned_sampler(s, sampler_id, owner)
            reloadable = sampler.model_path is not None
            if sampler.unloaded_reason is not None and not reloadable:
                raise Gone(
                    f"sampler {sampler_id} is no longer loaded: {sampler.unloaded_reason}. "
                    "Save the weights again (save_weights_and_get_sampling_client) or sample from a saved checkpoint"
                )
            worker = ctx.scheduler.worker(sampler.base_model)
            worker.check_capacity(sampling=True, strict=backpressure)
            adapter_id = sampler_id if sampler.has_adapter else None
            job = sample_job(req, adapter_id, worker.info)
            request_id = ctx.futures.new_id()
            ctx.futures.add(s, request_id=request_id, owner=owner, kind="sample", model_id=sampler_id, seq_id=req.seq_id)
        prepare = None
        if reloadable and sampler.model_path is not None:
            directory = checkpoint_dir(ctx.settings.checkpoints_dir, parse_tinker_path(sampler.model_path))
            db = ctx.db

            def reloaded() -> None:
                with db.session() as s2:
                    row = s2.get(SamplerRow, sampler_id)
                    if row is not None:
                        row.unloaded_reason = None

            prepare = self.checkpoint_loader(sampler_id, sampler.base_model, directory, reloaded)

        # One id per sample (0.26+ clients require them); a retried submit gets new ones.
        sequence_ids = [f"{request_id}:{i}" for i in range(job.num_samples)]
        worker.submit(
            SampleTask(
                request_id=request_id,
                job=job,
                prepare=prepare,
                on_result=lambda output: sample_result(output, sequence_ids),
            )
        )
        return wire.UntypedAPIFuture(request_id=request_id, model_id=sampler_id, sample_sequence_ids=sequence_ids)

    def cancel(self, owner: str, request_id: str) -> dict[str, str]:
        """``POST /cancel_future`` (0.26+): a sampling request the client abandoned. Still
        queued: it is taken out and fails as cancelled. Running or finished: it stays as it is."""
        ctx = self._ctx
        row = ctx.futures.get(request_id)
        if row is None or row.owner != owner:
            raise NotFound(f"unknown request_id {request_id!r}")
        if row.kind != "sample" or row.status != "pending" or row.model_id is None:
            return {"status": "not cancelled"}
        with ctx.db.session() as s:
            sampler = s.get(SamplerRow, row.model_id)
            base_model = sampler.base_model if sampler is not None else None
        if base_model is None or not ctx.scheduler.worker(base_model).withdraw_sample(request_id):
            return {"status": "not cancelled"}
        ctx.futures.fail(request_id, "the client cancelled this sampling request", "user")
        return {"status": "cancelled"}

    def get_sampler(self, owner: str, sampler_id: str) -> wire.GetSamplerResponse:
        with self._ctx.db.session() as s:
            row = owned_sampler(s, sampler_id, owner)
            return wire.GetSamplerResponse(sampler_id=row.id, base_model=row.base_model, model_path=row.model_path)

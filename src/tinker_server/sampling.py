"""Sampling sessions and sampling requests.

A sampler is one of:

* a base-model sampler (``base_model`` only): no adapter;
* a checkpoint sampler (``model_path``): the checkpoint's adapter under the sampler's
  id, which the engine loads from the checkpoint's folder when a request needs it and
  may evict when it holds too many (its residency policy); it reloads on demand;
* a snapshot sampler (``save_weights_for_sampler`` without a name): a weights-only
  copy of a training run's adapter, held in engine memory only (gone once evicted).

Creating a sampler records it and touches no engine: the first request loads what it needs.
"""

from __future__ import annotations

from typing import Any

from . import wire
from .admission import Admission, sample_estimate
from .context import Context
from .convert import check_sample_tokens, sample_job, sample_result
from .db import SamplerRow, utcnow
from .engine.api import Sample
from .errors import Gone, InvalidRequest, NotFound
from .paths import checkpoint_dir, parse_tinker_path
from .records import owned_sampler, owned_session, readable_checkpoint, readable_source
from .scheduler import Task

__all__ = ["SamplingService"]


class SamplingService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def create_sampling_session(
        self, owner: str, req: wire.CreateSamplingSessionRequest
    ) -> wire.CreateSamplingSessionResponse:
        ctx = self._ctx
        sampler_id = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        with ctx.db.session() as s:
            session_row = owned_session(s, req.session_id, owner)
            if s.get(SamplerRow, sampler_id) is not None:
                return wire.CreateSamplingSessionResponse(sampling_session_id=sampler_id)
            model_path = req.model_path
            if model_path is not None:
                run, _row = readable_checkpoint(s, parse_tinker_path(model_path), owner)
                base_model = run.base_model
                if req.base_model is not None and req.base_model != base_model:
                    raise InvalidRequest(
                        f"base_model {req.base_model!r} does not match {model_path}, trained on {base_model}"
                    )
            elif req.base_model is not None:
                base_model = req.base_model
            else:
                raise InvalidRequest("create_sampling_session needs a base_model or a model_path")
            ctx.scheduler.worker(base_model)  # refuses a model not served here
            Admission.check_base_model(ctx.tenants.quota(owner), base_model)
            session_row.expired = False
            session_row.last_heartbeat = utcnow()
            s.merge(
                SamplerRow(
                    id=sampler_id,
                    owner=owner,
                    session_id=req.session_id,
                    base_model=base_model,
                    model_path=model_path,
                    has_adapter=model_path is not None,
                    created_at=utcnow(),
                )
            )
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
            base_model, model_path = sampler.base_model, sampler.model_path
            adapter_id = sampler_id if sampler.has_adapter else None
            if model_path is not None:
                readable_source(s, sampler_id, model_path, owner)  # on every use: unpublish/delete cut it off
        worker = ctx.scheduler.worker(base_model)
        quota = ctx.tenants.quota(owner)
        admission = ctx.scheduler.admission
        Admission.check_base_model(quota, base_model)
        Admission.check_queued(quota, ctx.scheduler.queued(owner))
        worker.check_capacity(sampling=True, strict=backpressure, owner=owner)
        job = sample_job(req, adapter_id, worker.model_info())
        check_sample_tokens(job, ctx.settings.max_sample_tokens_per_request)
        # Tokens per minute: refused with 429 + Retry-After while over (both client generations
        # wait and resubmit a refused asample); charged at the most it may generate, settled below.
        estimate = sample_estimate(job.num_samples, job.max_tokens)
        charge = admission.admit(owner, quota, estimate)
        with ctx.db.session() as s:
            request_id = ctx.futures.new_id()
            ctx.futures.add(
                s, request_id=request_id, owner=owner, kind="sample", model_id=sampler_id, seq_id=req.seq_id
            )
        reload_from = None
        if model_path is not None:
            reload_from = checkpoint_dir(ctx.settings.checkpoints_dir, parse_tinker_path(model_path))
        # One id per sample (0.26+ clients require them); a retried submit gets new ones.
        sequence_ids = [f"{request_id}:{i}" for i in range(job.num_samples)]

        def on_result(output: Any) -> Any:
            admission.settle(charge, sum(len(seq.tokens) for seq in output.sequences))
            return sample_result(output, sequence_ids)

        worker.submit(
            Task(
                Sample(job, reload_from=reload_from),
                request_id=request_id,
                on_result=on_result,
                on_error=lambda _exc: admission.settle(charge, 0),
                owner=owner,
                weight=quota.weight,
                cost=len(job.prompt) + estimate,
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

"""Training runs: create_model, forward/backward, optimizer steps, saving and loading weights.

Every operation on a run is a future. Submits are checked at once (ownership,
state, ``seq_id``, payload) and rejected with a 4xx before anything is queued;
accepted ones are recorded, then queued on the run's queue in the scheduler.

Retries: a submit with a ``(model_id, seq_id)`` that was already accepted
returns the existing request id and is not applied again (likewise
``(session_id, model_seq_id)`` for create_model). A lower ``seq_id`` that was
never seen is an error.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value

from . import wire
from .admission import Admission, QuotaExceeded
from .checkpoints import FILES_LOCK, expiry, validate_ttl
from .context import Context
from .convert import adam_config, train_data, train_result
from .db import CheckpointRow, SamplerRow, TrainingRunRow, utcnow
from .engine import LoraSpec, UserInputError, rules
from .engine.api import (
    Command,
    CopyAdapter,
    CreateAdapter,
    DropAdapter,
    ForwardBackward,
    LoadAdapter,
    OptimStep,
    SaveAdapter,
)
from .errors import Gone, InvalidRequest, Overloaded
from .paths import CheckpointRef, checkpoint_dir, parse_tinker_path, validate_checkpoint_name
from .records import find_checkpoint, not_expired, owned_run, owned_session, readable_checkpoint
from .reorder import ReorderFull, SeqReorder
from .scheduler import Task, Worker
from .sessions import check_not_finished

__all__ = ["DEFAULT_OPTIMIZER", "TrainingService", "optimizer_family"]

log = logging.getLogger(__name__)

DEFAULT_LORA_RANK = 32
DEFAULT_OPTIMIZER: dict[str, Any] = {"type": "adamw"}
# save_weights_for_sampler kinds (0.38); both are served as a snapshot of the current weights.
SAMPLER_KINDS = ("snapshot", "inflight")


def _exists_message(ref: CheckpointRef) -> str:
    return f"checkpoint {ref.tinker_path} already exists; pass overwrite=True to replace it, or save under another name"


def _seq_ordered(
    method: Callable[[Any, str, Any], wire.UntypedAPIFuture],
) -> Callable[[Any, str, Any], wire.UntypedAPIFuture]:
    """For an operation that takes a ``seq_id``: when it is refused with a 400 (or a quota's
    403), that id is used up (the client moves on to the next), so it must not hold later
    submits back."""

    @functools.wraps(method)
    def submit(self: TrainingService, owner: str, req: Any) -> wire.UntypedAPIFuture:
        try:
            return method(self, owner, req)
        except (InvalidRequest, QuotaExceeded):
            self._use_up(owner, getattr(req, "model_id", None), getattr(req, "seq_id", None))
            raise

    return submit


def _advance_seq(s: Any, run: TrainingRunRow, old: int, new: int) -> None:
    """Move the run's last accepted ``seq_id`` from ``old`` to ``new`` in the database, only
    if it is still ``old``: the database, not a process lock, decides which submit took an
    id, so API processes sharing it cannot both accept one (the loser gets a 400)."""
    run_id = run.id  # read now: a failed flush expires the row
    run.last_seq_id = old  # the ORM must not write the attribute itself
    try:
        s.flush()  # the request row: its dedup key is unique, so a second acceptance of this id fails here
    except sa.exc.IntegrityError:
        raise InvalidRequest(
            f"seq_id {new} of {run_id} was taken by a concurrent submit; submit the operations of a run in order"
        ) from None
    if new == old:
        return
    done = s.execute(
        sa.update(TrainingRunRow)
        .where(TrainingRunRow.id == run.id, TrainingRunRow.last_seq_id == old)
        .values(last_seq_id=new)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(done, "rowcount", 0) or 0) != 1:
        raise InvalidRequest(f"seq_id {new} of {run_id} was taken by a concurrent submit; submit in order")
    set_committed_value(run, "last_seq_id", new)


def _future(request_id: str, model_id: str | None) -> wire.UntypedAPIFuture:
    return wire.UntypedAPIFuture(request_id=request_id, model_id=model_id)


def loaded_runs(s: Any, owner: str) -> int:
    """The owner's training runs not unloaded (the quota's concurrent training runs)."""
    query = sa.select(sa.func.count()).select_from(TrainingRunRow)
    return int(s.scalar(query.where(TrainingRunRow.owner == owner, TrainingRunRow.unloaded_reason.is_(None))) or 0)


def stored_bytes(s: Any, owner: str) -> int:
    """The size of the owner's checkpoints that have not expired (the quota's storage)."""
    query = sa.select(sa.func.coalesce(sa.func.sum(CheckpointRow.size_bytes), 0))
    return int(s.scalar(query.where(CheckpointRow.owner == owner, not_expired())) or 0)


def command_tokens(command: Command) -> int:
    """The tokens a training command puts through the engine (forward/forward_backward inputs)."""
    if isinstance(command, ForwardBackward):
        return sum(len(d.tokens) for d in command.data)
    return 0


class TrainingService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._held: SeqReorder[Task] = SeqReorder(
            max_held=ctx.settings.max_held_requests, gap_timeout_s=ctx.settings.seq_gap_timeout_s
        )

    # -- create / info / unload -------------------------------------------------------------

    def create_model(self, owner: str, req: wire.CreateModelRequest) -> wire.UntypedAPIFuture:
        lora = req.lora_config or wire.LoraConfig(rank=DEFAULT_LORA_RANK)
        spec = LoraSpec(
            rank=lora.rank,
            seed=lora.seed,
            train_mlp=lora.train_mlp,
            train_attn=lora.train_attn,
            train_unembed=lora.train_unembed,
        )
        try:
            rules.check_lora_spec(spec)
        except UserInputError as exc:
            raise InvalidRequest(f"lora_config: {exc}") from None
        return self._new_run(
            owner,
            req.session_id,
            req.model_seq_id,
            base_model=req.base_model,
            lora_config=lora.model_dump(mode="json"),
            optimizer_config=optimizer_family(req.optimizer_config, "optimizer_config"),
            user_metadata=req.user_metadata,
            kind="create_model",
            command=lambda run_id: CreateAdapter(run_id, spec),
            response=lambda run_id: wire.CreateModelResponse(model_id=run_id),
        )

    def _new_run(
        self,
        owner: str,
        session_id: str,
        model_seq_id: int,
        *,
        base_model: str,
        lora_config: dict[str, Any],
        optimizer_config: dict[str, Any],
        user_metadata: dict[str, Any] | None,
        kind: str,
        command: Callable[[str], Command],
        response: Callable[[str], Any],
    ) -> wire.UntypedAPIFuture:
        """Record a new run ``<session>:train:<model_seq_id>`` and queue ``command(run_id)``,
        which creates its adapter. A retried submit returns the first one's request id."""
        ctx = self._ctx
        run_id = f"{session_id}:train:{model_seq_id}"
        with self._lock, ctx.db.session() as s:
            session_row = owned_session(s, session_id, owner)
            check_not_finished(session_row)
            if s.get(TrainingRunRow, run_id) is not None:
                dup = ctx.futures.find_by_dedup(s, f"{run_id}#create")
                if dup is not None:
                    return _future(dup.id, run_id)
                raise InvalidRequest(f"model_seq_id {model_seq_id} was already used in session {session_id}")
            if model_seq_id < 0:
                raise InvalidRequest(f"model_seq_id must be >= 0, got {model_seq_id}")
            worker = ctx.scheduler.worker(base_model)
            quota = ctx.tenants.quota(owner)
            Admission.check_base_model(quota, base_model)
            Admission.check_lora_rank(quota, int(lora_config["rank"]))
            Admission.check_training_runs(quota, loaded_runs(s, owner))
            Admission.check_queued(quota, ctx.scheduler.queued(owner))
            worker.check_capacity(owner=owner)
            now = utcnow()
            session_row.expired = False
            session_row.last_heartbeat = now
            s.add(
                TrainingRunRow(
                    id=run_id,
                    owner=owner,
                    session_id=session_id,
                    model_seq_id=model_seq_id,
                    base_model=base_model,
                    lora_rank=int(lora_config["rank"]),
                    lora_config=lora_config,
                    optimizer_config=optimizer_config,
                    user_metadata=user_metadata,
                    created_at=now,
                    last_request_time=now,
                    last_seq_id=0,
                )
            )
            request_id = ctx.futures.new_id()
            ctx.futures.add(
                s, request_id=request_id, owner=owner, kind=kind, model_id=run_id, dedup_key=f"{run_id}#create"
            )

        def on_error(exc: BaseException) -> None:
            with ctx.db.session() as s2:
                run = s2.get(TrainingRunRow, run_id)
                if run is not None:
                    run.corrupted = True
                    run.unloaded_reason = f"creating it failed: {exc}"

        worker.submit(
            Task(
                command(run_id),
                request_id=request_id,
                queue_key=run_id,
                on_result=lambda _: response(run_id).model_dump(mode="json"),
                on_error=on_error,
                owner=owner,
                weight=quota.weight,
            )
        )
        return _future(request_id, run_id)

    def run_info(self, owner: str, model_id: str) -> TrainingRunRow:
        with self._ctx.db.session() as s:
            return owned_run(s, model_id, owner)

    def unload_model(self, owner: str, model_id: str) -> wire.UntypedAPIFuture:
        ctx = self._ctx
        with self._lock, ctx.db.session() as s:
            run = owned_run(s, model_id, owner)
            worker = ctx.scheduler.worker(run.base_model)
            if run.unloaded_reason is None:
                run.unloaded_reason = "it was unloaded with unload_model"
            request_id = ctx.futures.new_id()
            ctx.futures.add(s, request_id=request_id, owner=owner, kind="unload_model", model_id=model_id)

        worker.submit(
            Task(
                DropAdapter(model_id),
                request_id=request_id,
                queue_key=model_id,
                owner=owner,
                on_result=lambda _: wire.UnloadModelResponse(model_id=model_id, type="unload_model").model_dump(
                    mode="json"
                ),
            )
        )
        return _future(request_id, model_id)

    # -- the common submit path -------------------------------------------------------------

    def _submit(
        self,
        owner: str,
        model_id: str,
        seq_id: int | None,
        kind: str,
        build: Callable[[TrainingRunRow, Worker, Any], Task],
    ) -> wire.UntypedAPIFuture:
        """Check, record and queue one operation of a run, in ``seq_id`` order.

        A submit ahead of the next expected ``seq_id`` is recorded at once (the client
        polls it) but held until the ones before it arrive (:mod:`.reorder`). A submit
        rejected with a 400 uses its ``seq_id`` up, so it leaves no gap behind.
        """
        ctx = self._ctx
        if not all(ctx.scheduler.worker(m).loaded for m in ctx.scheduler.models):
            # The request is checked against the model's info: while its model loads, wait for
            # it outside the lock, so a cold model checks exactly as a warm one.
            with ctx.db.session() as s:
                base_model = owned_run(s, model_id, owner).base_model
            ctx.scheduler.worker(base_model).model_info()
        with self._lock:
            with ctx.db.session() as s:
                run = owned_run(s, model_id, owner)
                dedup_key = f"{model_id}#{seq_id}" if seq_id is not None else None
                if dedup_key is not None:
                    dup = ctx.futures.find_by_dedup(s, dedup_key)
                    if dup is not None:
                        if dup.kind != kind:
                            raise InvalidRequest(
                                f"seq_id {seq_id} of {model_id} was already used by a {dup.kind} request; "
                                f"a retried {kind} must not reuse another operation's seq_id"
                            )
                        return _future(dup.id, model_id)
                if run.unloaded_reason is not None:
                    raise Gone(
                        f"training run {model_id} is no longer loaded: {run.unloaded_reason}. Resume it from a "
                        f"checkpoint with ServiceClient.create_training_client_from_state("
                        f"'tinker://{model_id}/weights/<name>')"
                    )
                if seq_id is not None and (seq_id <= run.last_seq_id or self._held.is_held(model_id, seq_id)):
                    raise InvalidRequest(
                        f"seq_id {seq_id} of {model_id} is not after the last accepted seq_id {run.last_seq_id}; "
                        "operations of a training client must be submitted in order"
                    )
                worker = ctx.scheduler.worker(run.base_model)
                quota = ctx.tenants.quota(owner)
                Admission.check_queued(quota, ctx.scheduler.queued(owner))
                worker.check_capacity(owner=owner)
                task = build(run, worker, s)
                ready = self._accept(s, run, owner, kind, seq_id, dedup_key, task)
                self._admit(owner, quota, task)
            # Queued under the lock, after the rows are committed: the run's queue keeps seq_id order.
            for item in ready:
                worker.submit(item)
        return _future(task.request_id or "", model_id)

    def _admit(self, owner: str, quota: Any, task: Task) -> None:
        """Tag an accepted task with its tenant and cost, and hold it while the tenant is over
        its tokens per minute: the request stays accepted (so a run's seq_ids stay in order)
        and its polls answer ``queue_state: paused_rate_limit`` until it may start."""
        ctx = self._ctx
        task.owner, task.weight = owner, quota.weight
        task.cost = command_tokens(task.command)
        if task.cost <= 0 or quota.tokens_per_minute is None:
            return
        admission = ctx.scheduler.admission
        delay = admission.schedule(owner, quota, task.cost) - admission.now()
        if delay > 0.001 and task.request_id is not None:
            task.not_before = time.monotonic() + delay
            ctx.futures.set_queue_state(
                task.request_id,
                "paused_rate_limit",
                f"this API key's limit of {quota.tokens_per_minute} tokens per minute is reached; the request "
                f"is accepted and starts in about {max(1, round(delay))} s",
            )

    def _accept(
        self, s: Any, run: TrainingRunRow, owner: str, kind: str, seq_id: int | None, dedup_key: str | None, task: Task
    ) -> list[Task]:
        """Record an accepted submit; the tasks now ready to queue (none while it is held)."""
        ctx = self._ctx
        request_id = ctx.futures.new_id()
        ready: list[Task] = []
        first = run.last_seq_id
        if seq_id is not None:
            # Ids used up by rejected submits no longer hold anything back.
            self._held.discard(run.id, seq_id)
            run.last_seq_id, ready = self._held.release(run.id, run.last_seq_id)
        if seq_id is not None and seq_id > run.last_seq_id + 1:
            try:
                self._held.hold(run.id, seq_id, task, time.monotonic())
            except ReorderFull as exc:
                raise Overloaded(str(exc)) from None
        ctx.futures.add(
            s,
            request_id=request_id,
            owner=owner,
            kind=kind,
            model_id=run.id,
            seq_id=seq_id,
            dedup_key=dedup_key,
        )
        task.request_id = request_id
        task.queue_key = run.id
        run.last_request_time = utcnow()
        if seq_id is None or seq_id > run.last_seq_id + 1:
            _advance_seq(s, run, first, run.last_seq_id)
            return [*ready, task] if seq_id is None else ready
        run.last_seq_id, held = self._held.release(run.id, seq_id)
        _advance_seq(s, run, first, run.last_seq_id)
        return [*ready, task, *held]

    def _use_up(self, owner: str, model_id: str | None, seq_id: int | None) -> None:
        """Mark the ``seq_id`` of a submit rejected with a 400 used up, so later submits need
        not wait for it, and queue the held ones this releases."""
        if model_id is None or seq_id is None:
            return
        with self._lock:
            with self._ctx.db.session() as s:
                run = s.get(TrainingRunRow, model_id)
                if run is None or run.owner != owner or seq_id <= run.last_seq_id:
                    return
                if self._held.is_held(model_id, seq_id):
                    return  # a retry of a held submit was refused; the held one stands
                self._held.hold(model_id, seq_id, None, time.monotonic())
                if not self._held.has_items(model_id):
                    return  # nothing waits behind it: the client may still send this id again
                old = run.last_seq_id
                new, ready = self._held.release(model_id, old)
                _advance_seq(s, run, old, new)
                worker = self._ctx.scheduler.worker(run.base_model)
            for item in ready:
                worker.submit(item)

    def fail_stalled(self, now: float | None = None) -> int:
        """Fail the submits held for a ``seq_id`` that never came (after ``seq_gap_timeout_s``);
        the run goes on after the last of them. Returns how many were failed."""
        ctx = self._ctx
        failed = 0
        with self._lock:
            for run_id, entries in self._held.expire(time.monotonic() if now is None else now):
                with ctx.db.session() as s:
                    run = s.get(TrainingRunRow, run_id)
                    if run is None:
                        continue
                    have = {h.seq_id for h in entries}
                    missing = [i for i in range(run.last_seq_id + 1, entries[-1].seq_id) if i not in have]
                    _advance_seq(s, run, run.last_seq_id, max(run.last_seq_id, entries[-1].seq_id))
                gap = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
                message = (
                    f"seq_id {gap} of {run_id} never arrived within {ctx.settings.seq_gap_timeout_s:g} s, "
                    "so the requests after it were not run; submit them again"
                )
                for entry in entries:
                    if entry.item is not None and entry.item.request_id is not None:
                        ctx.futures.fail(entry.item.request_id, message, "user")
                        failed += 1
                log.warning("%s (%d request(s) failed)", message, failed)
        return failed

    # -- forward / backward / optimizer -----------------------------------------------------

    @_seq_ordered
    def forward(self, owner: str, req: wire.ForwardRequest) -> wire.UntypedAPIFuture:
        return self._forward(owner, req.model_id, req.seq_id, req.forward_input, backward=False)

    @_seq_ordered
    def forward_backward(self, owner: str, req: wire.ForwardBackwardRequest) -> wire.UntypedAPIFuture:
        return self._forward(owner, req.model_id, req.seq_id, req.forward_backward_input, backward=True)

    def _forward(
        self, owner: str, model_id: str, seq_id: int | None, fwd: wire.ForwardBackwardInput, *, backward: bool
    ) -> wire.UntypedAPIFuture:
        field = "forward_backward_input" if backward else "forward_input"
        loss_fn = fwd.loss_fn

        try:
            rules.resolve_loss(loss_fn)
        except UserInputError as exc:
            raise InvalidRequest(f"{field}.loss_fn: {exc}") from None
        data = train_data(fwd.data, field=field)
        config = dict(fwd.loss_fn_config) if fwd.loss_fn_config is not None else None

        def build(run: TrainingRunRow, worker: Worker, _s: Any) -> Task:
            info = worker.model_info()
            try:
                rules.check_train_request(
                    data, loss_fn, config, backward=backward, vocab_size=info.vocab_size, max_context=info.max_context
                )
            except UserInputError as exc:
                raise InvalidRequest(f"{field}: {exc}") from None
            return Task(
                ForwardBackward(model_id, data, loss_fn, config, backward),
                on_result=lambda out: train_result(out, loss_fn),
            )

        return self._submit(owner, model_id, seq_id, "forward_backward" if backward else "forward", build)

    @_seq_ordered
    def optim_step(self, owner: str, req: wire.OptimStepRequest) -> wire.UntypedAPIFuture:
        config = adam_config(req)
        model_id = req.model_id

        def build(run: TrainingRunRow, worker: Worker, _s: Any) -> Task:
            return Task(
                OptimStep(model_id, config),
                on_result=lambda metrics: wire.OptimStepResponse(
                    metrics={str(k): float(v) for k, v in (metrics or {}).items()}
                ).model_dump(mode="json"),
            )

        return self._submit(owner, model_id, req.seq_id, "optim_step", build)

    # -- weights ----------------------------------------------------------------------------

    def _check_storage(self, s: Any, owner: str) -> None:
        """A save is refused while the tenant's checkpoints fill its storage quota."""
        quota = self._ctx.tenants.quota(owner)
        if quota.max_checkpoint_bytes is not None:
            Admission.check_storage(quota, stored_bytes(s, owner))

    def _record_checkpoint(
        self,
        ref: CheckpointRef,
        owner: str,
        size: int | None,
        *,
        ttl_seconds: int | None,
        user_metadata: dict[str, Any] | None,
    ) -> None:
        """Insert or replace the checkpoint's row (worker thread, under ``FILES_LOCK``).

        A replaced checkpoint takes the new save's time, size, expiry and
        user_metadata, and becomes private: publishing is a decision about weights, so
        new weights under a published name are not shared until published again.
        """
        with self._ctx.db.session() as s:
            row = find_checkpoint(s, ref, include_expired=True)
            now = utcnow()
            expires_at = expiry(ttl_seconds, now)
            if row is None:
                s.add(
                    CheckpointRow(
                        run_id=ref.run_id,
                        owner=owner,
                        checkpoint_id=ref.checkpoint_id,
                        checkpoint_type=ref.checkpoint_type,
                        time=now,
                        tinker_path=ref.tinker_path,
                        size_bytes=size,
                        public=False,
                        expires_at=expires_at,
                        user_metadata=user_metadata,
                    )
                )
            else:
                row.public = False  # new weights: never shared without a publish call
                row.time = now
                row.size_bytes = size
                row.expires_at = expires_at
                row.user_metadata = user_metadata

    def _save_task(
        self,
        owner: str,
        ref: CheckpointRef,
        *,
        optimizer: bool,
        response: Callable[[str, int | None], Any],
        refuse_existing: bool = False,
        ttl_seconds: int | None = None,
        user_metadata: dict[str, Any] | None = None,
    ) -> Task:
        """Write the adapter to ``ref``'s folder and record its row, as one step under
        ``FILES_LOCK`` (so neither a delete nor the expiry sweep can come between)."""
        directory = checkpoint_dir(self._ctx.settings.checkpoints_dir, ref)
        model_id = ref.run_id
        db = self._ctx.db

        def around(run: Callable[[], Any]) -> Any:
            with FILES_LOCK:
                if refuse_existing:
                    # Re-checked here: an earlier queued save may have taken the name since the submit.
                    with db.session() as s:
                        if find_checkpoint(s, ref) is not None:
                            raise InvalidRequest(_exists_message(ref))
                return run()

        def recorded(written: int | None) -> Any:
            size = int(written) if written is not None else None
            self._record_checkpoint(ref, owner, size, ttl_seconds=ttl_seconds, user_metadata=user_metadata)
            return response(ref.tinker_path, size)

        return Task(SaveAdapter(model_id, directory, optimizer), on_result=recorded, around=around)

    @_seq_ordered
    def save_weights(self, owner: str, req: wire.SaveWeightsRequest) -> wire.UntypedAPIFuture:
        def build(run: TrainingRunRow, worker: Worker, s: Any) -> Task:
            name = req.path if req.path is not None else f"ckpt-{req.seq_id if req.seq_id is not None else 0:06d}"
            ref = CheckpointRef(run.id, "weights", validate_checkpoint_name(name))
            ttl_seconds = validate_ttl(req.ttl_seconds)
            # 0.20+ clients always send overwrite (default false); 0.5.1 clients never do,
            # and for them saving an existing name keeps replacing it.
            refuse_existing = "overwrite" in req.model_fields_set and not req.overwrite
            if refuse_existing and find_checkpoint(s, ref) is not None:
                raise InvalidRequest(_exists_message(ref))
            self._check_storage(s, owner)
            return self._save_task(
                owner,
                ref,
                optimizer=True,
                refuse_existing=refuse_existing,
                ttl_seconds=ttl_seconds,
                user_metadata=req.user_metadata,
                response=lambda path, _size: wire.SaveWeightsResponse(path=path, type="save_weights").model_dump(
                    mode="json"
                ),
            )

        return self._submit(owner, req.model_id, req.seq_id, "save_weights", build)

    @_seq_ordered
    def save_weights_for_sampler(self, owner: str, req: wire.SaveWeightsForSamplerRequest) -> wire.UntypedAPIFuture:
        def build(run: TrainingRunRow, worker: Worker, s: Any) -> Task:
            # "inflight" (0.38) asks for a sampler that serves these weights or newer ones; a
            # frozen copy of these weights satisfies that, so both kinds make a snapshot.
            if req.kind not in SAMPLER_KINDS:
                raise InvalidRequest(f"kind must be one of {', '.join(SAMPLER_KINDS)}; got {req.kind!r}")
            ttl_seconds = validate_ttl(req.ttl_seconds)
            if req.path is None and req.sampling_session_seq_id is None:
                raise InvalidRequest("save_weights_for_sampler needs a name (path) or a sampling_session_seq_id")
            if req.path is not None:
                ref = CheckpointRef(run.id, "sampler_weights", validate_checkpoint_name(req.path))
                self._check_storage(s, owner)
                return self._save_task(
                    owner,
                    ref,
                    optimizer=False,
                    ttl_seconds=ttl_seconds,
                    user_metadata=req.user_metadata,
                    response=lambda path, _size: wire.SaveWeightsForSamplerResponse(
                        path=path, type="save_weights_for_sampler"
                    ).model_dump(mode="json", exclude_none=True),
                )
            assert req.sampling_session_seq_id is not None
            sampler_id = f"{run.session_id}:sample:{req.sampling_session_seq_id}"
            if s.get(SamplerRow, sampler_id) is not None:
                raise InvalidRequest(
                    f"sampling_session_seq_id {req.sampling_session_seq_id} was already used "
                    f"in session {run.session_id}"
                )
            return self._ephemeral_task(owner, run, sampler_id)

        return self._submit(owner, req.model_id, req.seq_id, "save_weights_for_sampler", build)

    @_seq_ordered
    def save_weights_external(self, owner: str, req: wire.SaveWeightsExternalRequest) -> wire.UntypedAPIFuture:
        """A Hugging Face/PEFT-format copy of the adapter (no optimizer state) at
        ``tinker://<run>/external_weights/<name>``; its files are fetched through
        signed per-file URLs (``…/external_weights_urls``). Saving a name again replaces it."""

        def build(run: TrainingRunRow, worker: Worker, s: Any) -> Task:
            if req.age_encryption_recipients:
                raise InvalidRequest(
                    "age_encryption_recipients: encrypted exports are not supported by this server; "
                    "export without recipients (the files are plain adapter_config.json and safetensors)"
                )
            ttl_seconds = validate_ttl(req.ttl_seconds)
            name = req.path if req.path is not None else f"ckpt-{req.seq_id if req.seq_id is not None else 0:06d}"
            ref = CheckpointRef(run.id, "external_weights", validate_checkpoint_name(name))
            self._check_storage(s, owner)
            return self._save_task(
                owner,
                ref,
                optimizer=False,
                ttl_seconds=ttl_seconds,
                response=lambda path, size: wire.SaveWeightsExternalResponse(path=path, size_bytes=size).model_dump(
                    mode="json"
                ),
            )

        return self._submit(owner, req.model_id, req.seq_id, "save_weights_external", build)

    def _ephemeral_task(self, owner: str, run: TrainingRunRow, sampler_id: str) -> Task:
        db = self._ctx.db
        run_id, session_id, base_model = run.id, run.session_id, run.base_model

        def recorded(_: None) -> Any:
            # Older snapshots of the run that the engine evicted were recorded as events.
            with db.session() as s:
                s.merge(
                    SamplerRow(
                        id=sampler_id,
                        owner=owner,
                        session_id=session_id,
                        base_model=base_model,
                        model_path=None,
                        has_adapter=True,
                        source_run_id=run_id,
                        created_at=utcnow(),
                    )
                )
            return wire.SaveWeightsForSamplerResponse(
                path=None, sampling_session_id=sampler_id, type="save_weights_for_sampler"
            ).model_dump(mode="json")

        return Task(CopyAdapter(run_id, sampler_id), on_result=recorded)

    @_seq_ordered
    def load_weights(self, owner: str, req: wire.LoadWeightsRequest) -> wire.UntypedAPIFuture:
        ref = parse_tinker_path(req.path)
        optimizer = bool(req.optimizer)
        if optimizer and ref.kind != "weights":
            raise InvalidRequest(
                f"{req.path} is a sampler checkpoint: it holds no optimizer state; "
                "load it without the optimizer, or use a tinker://.../weights/<name> checkpoint"
            )
        directory = checkpoint_dir(self._ctx.settings.checkpoints_dir, ref)
        if req.model_id is None:
            return self._create_from_checkpoint(owner, req, ref, directory, optimizer=optimizer)
        model_id = req.model_id

        def build(run: TrainingRunRow, worker: Worker, s: Any) -> Task:
            source_run, _row = readable_checkpoint(s, ref, owner)
            if source_run.base_model != run.base_model:
                raise InvalidRequest(
                    f"{req.path} was trained on {source_run.base_model}, but {model_id} uses {run.base_model}"
                )
            if source_run.lora_rank != run.lora_rank:
                raise InvalidRequest(
                    f"{req.path} has LoRA rank {source_run.lora_rank}, but {model_id} has rank {run.lora_rank}"
                )
            return Task(
                LoadAdapter(model_id, directory, optimizer),
                on_result=lambda _: wire.LoadWeightsResponse(path=req.path, type="load_weights").model_dump(
                    mode="json"
                ),
            )

        return self._submit(owner, model_id, req.seq_id, "load_weights", build)

    def _create_from_checkpoint(
        self, owner: str, req: wire.LoadWeightsRequest, ref: CheckpointRef, directory: Any, *, optimizer: bool
    ) -> wire.UntypedAPIFuture:
        """``load_weights`` with ``session_id`` + ``model_seq_id`` (0.24+ clients): a new run
        ``<session>:train:<model_seq_id>`` configured like the checkpoint's run, holding its
        weights (and optimizer state when ``optimizer``)."""
        if req.session_id is None or req.model_seq_id is None:
            raise InvalidRequest(
                "load_weights needs model_id (load into an existing run) or session_id and model_seq_id "
                "(create a run from the checkpoint)"
            )
        with self._ctx.db.session() as s:
            source_run, _row = readable_checkpoint(s, ref, owner)
            base_model = source_run.base_model
            lora_config = dict(source_run.lora_config)
            source_optimizer = source_run.optimizer_config or DEFAULT_OPTIMIZER
        if req.base_model is not None and req.base_model != base_model:
            raise InvalidRequest(f"{req.path} was trained on {base_model}; it cannot be loaded onto {req.base_model}")
        if optimizer:
            optimizer_config = source_optimizer
        else:
            optimizer_config = optimizer_family(req.optimizer_config or source_optimizer, "optimizer_config")
        path = req.path
        return self._new_run(
            owner,
            req.session_id,
            req.model_seq_id,
            base_model=base_model,
            lora_config=lora_config,
            optimizer_config=optimizer_config,
            user_metadata=req.user_metadata,
            kind="load_weights",
            command=lambda run_id: LoadAdapter(run_id, directory, optimizer),
            response=lambda run_id: wire.LoadWeightsResponse(model_id=run_id, path=path),
        )


def optimizer_family(config: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """The optimizer a run is created with: AdamW (the default) is the one this server has."""
    if config is None:
        return dict(DEFAULT_OPTIMIZER)
    family = config.get("type", "adamw")
    if family != "adamw":
        why = rules.UNSUPPORTED_OPTIMIZERS.get(str(family), "this server implements AdamW only")
        raise InvalidRequest(
            f"{where}: the {family!r} optimizer is not supported by this server ({why}); use the default "
            "adamw (AdamParams in optim_step)"
        )
    return {"type": "adamw"}

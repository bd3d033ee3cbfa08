"""Scheduler: per-model ordering, batching and backpressure in front of the engines.

One :class:`Worker` per served base model owns that model's engine handle
(:class:`~tinker_server.engine.api.EngineHandle`: the engine in a worker process, or
in this process for tests) and drives it from one thread. The handle is started
(the model loaded) by that thread when the server starts or on first use.

Work arrives as :class:`Task` s, each carrying one typed engine command
(:mod:`tinker_server.engine.api`) and what to do with its outcome here, in the API
process (``on_result`` turns it into the response and records it; ``around`` wraps
the command when something must hold across it, e.g. a files lock). Tasks with a
``queue_key`` (a training run id) execute strictly in submit order for that key.
Each loop of the worker takes: all control tasks (no key), the heads of run queues
and up to ``max_sample_batch`` sampling tasks, the last two chosen by a weighted
deficit round robin over the tasks' owners (:mod:`.fairness`), so a tenant with many
runs or many queued samples gets its share per round, not one share per run or
request. Each control task is one round; the forward/forward_backward heads of
different runs (and tenants) go to the engine in one round (one pass through the base
model), and so do the sampling tasks. A task with ``not_before`` in the future (held
by its tenant's tokens-per-minute limit) blocks its run's queue until then. When only
sampling tasks are queued, the worker first lets requests that are still arriving
join the batch (see :meth:`Worker._gather_samples`).

A forward/forward_backward whose datums hold more than ``max_tokens_per_round``
tokens is run in parts of whole datums (:func:`split_forward_backward`), one part per
round its run's queue is picked in: the task stays at the head of that queue until its
last part ran, so other runs' and tenants' work goes in between (as the fair share
picks) and nothing else of its run does. Its result is the parts' merged
(:func:`merge_train_outputs`: outputs in datum order, ``:sum`` metrics added), the same
as unsplit; with backward, a :class:`~.engine.api.GradientCheckpoint` opened before the
first part and restored when a part fails makes it all or nothing (the future fails once,
with that part's error, and no later part runs). A result whose metrics cannot be merged
exactly makes the worker restore the gradients and run the request whole.

What the engine reports besides results (adapters it evicted) and the loss of its
process go to ``Scheduler.on_evicted`` / ``Scheduler.on_lost``, which the runtime
sets to record them in the database.

Every task carries a ``concurrent.futures.Future`` (``task.done``) for callers
that wait in-process, and optionally a durable request id that is resolved in
the :class:`~tinker_server.futures.FutureHub` for ``retrieve_future``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .admission import Admission
from .engine import AdapterNotFound, EngineError, ModelInfo, ModelLoadError, TrainDatum, TrainOutput, UserInputError
from .engine.api import (
    Command,
    CopyAdapter,
    CreateAdapter,
    DropAdapter,
    EngineHandle,
    Evicted,
    ForwardBackward,
    GradientCheckpoint,
    LoadAdapter,
    OptimStep,
    Sample,
    SaveAdapter,
    WorkerLost,
)
from .errors import InvalidRequest, NotFound, Overloaded, ServiceError, Unavailable
from .fairness import CALL_COST, DEFAULT_QUANTUM, Candidate, FairShare
from .futures import FutureHub

__all__ = [
    "HandleFactory",
    "Limits",
    "QueueSnapshot",
    "Scheduler",
    "Task",
    "WorkObserver",
    "Worker",
    "error_category",
    "merge_train_outputs",
    "split_forward_backward",
]

log = logging.getLogger(__name__)

HandleFactory = Callable[[str], EngineHandle]  # base model name -> its engine handle

# Sampling requests arriving closer together than this are batched (up to the window).
SAMPLE_ARRIVAL_GAP_S = 0.02
# After this many waits in a row that no other request joined, lone requests stop waiting.
LONE_WAITS_LIMIT = 3


@dataclass(frozen=True)
class Limits:
    """Queue and batching limits of every worker (from the server settings)."""

    max_pending: int  # queued requests per base model before submits get Overloaded
    max_pending_samples: int  # queued sampling requests, likewise
    max_sample_batch: int  # sampling requests handed to the engine at once
    sample_batch_window_s: float = 0.0  # see Worker._gather_samples
    fair_quantum: int = DEFAULT_QUANTUM  # work units (tokens) per tenant per round (fairness.py)
    # A forward/forward_backward with more input tokens runs in parts of whole datums, one
    # per round of its run's queue (None: never split).
    max_tokens_per_round: int | None = None


@dataclass(frozen=True)
class QueueSnapshot:
    """What a worker holds right now (read-only; the console's queue page)."""

    waiting_training: int  # queued training and control tasks
    waiting_samples: int  # queued sampling requests
    running: int  # tasks of the batch the engine is working on
    loaded: bool  # the engine is loaded


# How a metric's values over the parts of a split request merge exactly, by the reduction
# its key names (``"loss:sum"``); a key with another reduction is not split-safe.
METRIC_MERGES: dict[str, Callable[[list[float]], float]] = {"sum": sum, "max": max, "min": min}


def split_forward_backward(command: ForwardBackward, max_tokens: int) -> list[ForwardBackward] | None:
    """``command`` as consecutive parts of whole datums of at most ``max_tokens`` input tokens
    each (a datum larger than that is a part alone); ``None`` when it fits in one part."""
    parts: list[list[TrainDatum]] = []
    size = 0
    for datum in command.data:
        if not parts or (size + len(datum.tokens) > max_tokens and size > 0):
            parts.append([])
            size = 0
        parts[-1].append(datum)
        size += len(datum.tokens)
    if len(parts) < 2:
        return None
    return [replace(command, data=part) for part in parts]


def merge_train_outputs(outputs: list[TrainOutput]) -> TrainOutput | None:
    """The result of a request run in parts, from its parts' results (in order): the same as
    running it whole. ``None`` when a metric cannot be merged exactly (its reduction is not in
    :data:`METRIC_MERGES`, or the parts report different metrics)."""
    keys = list(outputs[0].metrics)
    if any(list(out.metrics) != keys for out in outputs):
        return None
    metrics: dict[str, float] = {}
    for key in keys:
        name, _, reduction = key.rpartition(":")
        merge = METRIC_MERGES.get(reduction)
        if not name or merge is None:
            return None
        metrics[key] = float(merge([out.metrics[key] for out in outputs]))
    return TrainOutput(loss_fn_outputs=[item for out in outputs for item in out.loss_fn_outputs], metrics=metrics)


@dataclass(eq=False)
class _Split:
    """A task's command run in parts: the parts, the part the next round runs, the results so far."""

    parts: list[ForwardBackward]
    next: int = 0
    outputs: list[TrainOutput] = field(default_factory=list)
    checkpoint: bool = False  # a GradientCheckpoint of the adapter is open in the engine

    def tokens(self) -> int:
        return sum(len(d.tokens) for d in self.parts[self.next].data)


# A part of a split task ran and the task goes back to the head of its run's queue.
_MORE: Any = object()


@dataclass(eq=False)
class Task:
    """One engine command and what to do with its outcome in this process."""

    command: Command
    request_id: str | None = None
    queue_key: str | None = None
    # Turns the engine's result into the response (runs in the worker thread, may record
    # metadata); the identity when None.
    on_result: Callable[[Any], Any] | None = None
    # Called (in the worker thread) when the task fails.
    on_error: Callable[[BaseException], None] | None = None
    # Runs the command and on_result inside it: ``around(run)`` must call ``run()`` once and
    # return its value (a lock held across the engine call and the recording of its result).
    around: Callable[[Callable[[], Any]], Any] | None = None
    done: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    queued_at: float = 0.0  # time.monotonic() when submitted (set by Worker.submit)
    # The tenant (owner id) whose request this is, its fair-share weight and the work's
    # cost in tokens (fairness.py); tasks without an owner share one anonymous tenant.
    owner: str | None = None
    weight: float = 1.0
    cost: int = 0
    # time.monotonic() before which the task may not start (its tenant's tokens per minute).
    not_before: float = 0.0
    tracked: bool = False  # counted in Scheduler.queued(owner) until it finishes
    # Set by the worker when the command runs in parts (Limits.max_tokens_per_round).
    split: _Split | None = field(default=None, repr=False)

    @property
    def tenant(self) -> str:
        return self.owner or ""

    @property
    def work(self) -> int:
        """The cost the fair share charges: the task's tokens (of its next part when it runs
        in parts), at least :data:`CALL_COST` for a call that is not forward/backward or sampling."""
        if self.split is not None:
            return self.split.tokens()
        return self.cost if self.batched else max(self.cost, CALL_COST)

    @property
    def engine_command(self) -> Command:
        """What the next round runs: the command, or its next part."""
        return self.command if self.split is None else self.split.parts[self.split.next]

    @property
    def batched(self) -> bool:
        """Forward/backward and sampling commands share engine rounds with other tasks'."""
        return isinstance(self.command, (ForwardBackward, Sample))


def error_category(exc: BaseException) -> str:
    """``user`` when the request was wrong, ``server`` otherwise."""
    if isinstance(exc, WorkerLost):
        return "server"
    if isinstance(exc, (UserInputError, AdapterNotFound, InvalidRequest, NotFound)):
        return "user"
    if isinstance(exc, ServiceError) and not isinstance(exc, Unavailable):
        return "user"
    return "server"


def error_message(exc: BaseException, request_id: str | None = None) -> str:
    """A failed future's ``error``: the sentence of a refusal (user errors, service errors,
    a lost worker, a model that cannot load); for any other failure a generic sentence with
    the request id, as its text may name server paths (the log has it, under that id)."""
    if isinstance(exc, (UserInputError, AdapterNotFound, ModelLoadError, WorkerLost, ServiceError)):
        return str(exc) or type(exc).__name__
    return f"internal server error (request id {request_id or 'unknown'}); the server's log has the details"


class WorkObserver(Protocol):
    """What a worker reports about its work (the server's metrics); called from its thread.

    ``kind`` of an engine step: ``load_model``, ``forward``, ``forward_backward`` (a batch
    with at least one backward), ``sample``, or one of the names in :data:`COMMAND_KINDS`.
    """

    def queue_wait(self, seconds: float) -> None: ...  # one task, from queued to started
    def engine_step(self, kind: str, seconds: float) -> None: ...
    def tokens_trained(self, count: int) -> None: ...  # input tokens of successful forward_backwards
    def tokens_sampled(self, count: int) -> None: ...  # generated tokens of successful samples
    def adapters_resident(self, count: int) -> None: ...  # after each round of work


class _Unobserved:
    def queue_wait(self, seconds: float) -> None:
        pass

    def engine_step(self, kind: str, seconds: float) -> None:
        pass

    def tokens_trained(self, count: int) -> None:
        pass

    def tokens_sampled(self, count: int) -> None:
        pass

    def adapters_resident(self, count: int) -> None:
        pass


UNOBSERVED: WorkObserver = _Unobserved()

# The name under which each single command's engine time is reported (``engine_step``).
COMMAND_KINDS: dict[type, str] = {
    CreateAdapter: "create_adapter",
    CopyAdapter: "copy_adapter",
    DropAdapter: "drop_adapter",
    LoadAdapter: "load_adapter",
    SaveAdapter: "save_adapter",
    OptimStep: "optim_step",
}


EventSink = Callable[[str, list[Evicted]], None]  # (base model, evictions)
LossSink = Callable[[str, str], None]  # (base model, why its engine's adapters were lost)


class Worker:
    """Drives one base model's engine handle from its own thread."""

    def __init__(
        self,
        model_name: str,
        factory: HandleFactory,
        futures: FutureHub,
        limits: Limits,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.model_name = model_name
        self._factory = factory
        self._futures = futures
        self._scheduler = scheduler
        self._max_pending = limits.max_pending
        self._max_pending_samples = limits.max_pending_samples
        self._max_sample_batch = limits.max_sample_batch
        self._sample_batch_window_s = limits.sample_batch_window_s
        self._max_tokens_per_round = limits.max_tokens_per_round
        self._lone_waits = 0  # gathering waits in a row that no other request joined
        self._cond = threading.Condition()
        self._control: deque[Task] = deque()
        self._runs: dict[str, deque[Task]] = {}
        self._samples: deque[Task] = deque()
        self._pending = 0
        # Queued (not taken) tasks per owner: all kinds, and sampling only (per-tenant shares).
        self._owner_pending: dict[str, int] = {}
        self._owner_samples: dict[str, int] = {}
        self._weights: dict[str, float] = {}  # the newest weight each owner's tasks carried
        self._train_share: FairShare[Task] = FairShare(limits.fair_quantum, self._weight)
        self._sample_share: FairShare[Task] = FairShare(limits.fair_quantum, self._weight)
        self._running = 0  # tasks taken by the current round
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.handle: EngineHandle | None = None
        self.info: ModelInfo | None = None  # set once the model has loaded
        self._info_ready: concurrent.futures.Future[ModelInfo] = concurrent.futures.Future()
        self.observer: WorkObserver = UNOBSERVED  # set by Scheduler.observe

    # -- submitting (any thread) ------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def pending_samples(self) -> int:
        return len(self._samples)

    @property
    def loaded(self) -> bool:
        return self.info is not None

    def snapshot(self) -> QueueSnapshot:
        with self._cond:
            waiting = len(self._control) + sum(len(queue) for queue in self._runs.values())
            return QueueSnapshot(waiting, len(self._samples), self._running, self.loaded)

    def check_capacity(self, *, sampling: bool = False, strict: bool = True, owner: str | None = None) -> None:
        """Raise :class:`Overloaded` when the queue is full.

        With ``owner``, the limits are shared between the tenants with queued work: a
        tenant is refused once it holds its share (the limit divided by the number of
        tenants with queued work, itself counted), and a tenant under its share is
        admitted even when others filled the queue, up to twice the limit in all. So one
        tenant alone may fill the queue, and a newcomer still finds room.
        """
        with self._cond:
            if sampling:
                limit = self._max_pending_samples if strict else 4 * self._max_pending_samples
                self._check_share(len(self._samples), limit, self._owner_samples, owner, "sampling queue")
            self._check_share(self._pending, self._max_pending, self._owner_pending, owner, "request queue")

    def _check_share(self, total: int, limit: int, counts: dict[str, int], owner: str | None, what: str) -> None:
        if owner is None:
            if total >= limit:
                raise Overloaded(f"the {what} of {self.model_name} is full; retry shortly")
            return
        mine = counts.get(owner, 0)
        tenants = 1 + sum(1 for other, n in counts.items() if n > 0 and other != owner)
        share = max(1, -(-limit // tenants))
        if mine >= share:
            raise Overloaded(
                f"your requests fill your share of the {what} of {self.model_name} "
                f"({mine} of {limit}, shared by {tenants} tenant(s)); retry shortly"
            )
        if total >= 2 * limit:
            raise Overloaded(f"the {what} of {self.model_name} is full; retry shortly")

    def _weight(self, owner: str) -> float:
        return self._weights.get(owner, 1.0)

    def _queued(self, task: Task) -> None:  # lock held: the task joined a queue
        self._pending += 1
        tenant = task.tenant
        self._owner_pending[tenant] = self._owner_pending.get(tenant, 0) + 1
        if isinstance(task.command, Sample):
            self._owner_samples[tenant] = self._owner_samples.get(tenant, 0) + 1

    def _dequeued(self, task: Task) -> None:  # lock held: the task left its queue
        self._pending -= 1
        tenant = task.tenant
        for counts in (
            (self._owner_pending, self._owner_samples) if isinstance(task.command, Sample) else (self._owner_pending,)
        ):
            left = counts.get(tenant, 0) - 1
            if left > 0:
                counts[tenant] = left
            else:
                counts.pop(tenant, None)

    def warm(self) -> None:
        """Start loading the model now (in the worker thread) if it is not loaded."""
        with self._cond:
            if self._stopping:
                return
            self._ensure_thread()

    def model_info(self, timeout: float | None = None) -> ModelInfo:
        """The model's :class:`ModelInfo`, waiting for it to load (blocking: call it off the
        event loop). Raises :class:`Unavailable` when it cannot be loaded or in time."""
        if self.info is not None:
            return self.info
        self.warm()
        try:
            return self._info_ready.result(timeout)
        except concurrent.futures.TimeoutError:
            raise Unavailable(f"base model {self.model_name} is still loading; retry shortly") from None
        except EngineError as exc:
            raise Unavailable(f"base model {self.model_name} is not available: {exc}") from None

    def withdraw_sample(self, request_id: str) -> bool:
        """Take a queued sampling request out of the queue (it was cancelled); ``False``
        when it is no longer queued (running or finished)."""
        with self._cond:
            task = next((t for t in self._samples if t.request_id == request_id), None)
        return task is not None and self.withdraw(task)

    def withdraw(self, task: Task) -> bool:
        """Take a queued sampling task out of the queue; ``False`` when it is not queued."""
        with self._cond:
            try:
                self._samples.remove(task)
            except ValueError:
                return False
            self._dequeued(task)
        self._untrack(task)
        return True

    def submit(self, task: Task) -> Task:
        with self._cond:
            if self._stopping:
                raise Unavailable("the server is shutting down")
            task.queued_at = time.monotonic()
            if (
                self._max_tokens_per_round is not None
                and task.split is None
                and task.queue_key is not None
                and isinstance(task.command, ForwardBackward)
            ):
                parts = split_forward_backward(task.command, self._max_tokens_per_round)
                task.split = _Split(parts) if parts is not None else None
            if isinstance(task.command, Sample):
                self._samples.append(task)
            elif task.queue_key is not None:
                self._runs.setdefault(task.queue_key, deque()).append(task)
            else:
                self._control.append(task)
            self._queued(task)
            if task.owner is not None:
                self._weights[task.owner] = task.weight
            self._ensure_thread()
            self._cond.notify()
        if self._scheduler is not None and task.owner is not None and not task.tracked:
            task.tracked = True
            self._scheduler._track(task.owner, 1)
        return task

    def _untrack(self, task: Task) -> None:
        """The task is finished (or gone): it no longer counts for its owner."""
        if task.tracked and self._scheduler is not None and task.owner is not None:
            task.tracked = False
            self._scheduler._track(task.owner, -1)

    def _ensure_thread(self) -> None:  # lock held
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"engine:{self.model_name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            leftovers = self._take_all()
        for task in leftovers:
            self._untrack(task)
            if not task.done.done():
                task.done.set_exception(Unavailable("the server shut down before this request ran"))
        if self._thread is not None:
            self._thread.join(timeout)
        if self.handle is not None:
            try:
                self.handle.close()
            except Exception:  # shutting down anyway
                log.exception("%s: closing the engine failed", self.model_name)

    def _take_all(self) -> list[Task]:  # lock held
        tasks = [*self._control, *self._samples, *(t for q in self._runs.values() for t in q)]
        self._control.clear()
        self._samples.clear()
        self._runs.clear()
        for task in tasks:
            self._dequeued(task)
        return tasks

    # -- the worker thread ------------------------------------------------------------------

    def _take(self) -> tuple[list[Task], list[Task], list[Task], list[Task]] | None:
        with self._cond:
            self._running = 0
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                if self._control or self._samples or any(q[0].not_before <= now for q in self._runs.values()):
                    break
                # Nothing to do, or only runs held by their tenant's tokens per minute.
                wake = min((q[0].not_before for q in self._runs.values()), default=None)
                self._cond.wait(None if wake is None else max(0.001, wake - now))
            self._gather_samples()
            if self._stopping:
                return None
            control = list(self._control)
            self._control.clear()
            now = time.monotonic()
            heads = [q[0] for q in self._runs.values() if q[0].not_before <= now]
            calls: list[Task] = []
            forwards: list[Task] = []
            for head in self._train_share.select([Candidate(t, t.tenant, t.work) for t in heads]):
                assert head.queue_key is not None
                queue = self._runs[head.queue_key]
                queue.popleft()
                if not queue:
                    del self._runs[head.queue_key]
                (forwards if isinstance(head.command, ForwardBackward) else calls).append(head)
            samples = self._sample_share.select(
                [Candidate(t, t.tenant, t.work) for t in self._samples], self._max_sample_batch
            )
            if samples:
                taken = set(map(id, samples))
                self._samples = deque(t for t in self._samples if id(t) not in taken)
            for task in [*control, *calls, *forwards, *samples]:
                self._dequeued(task)
                if task.request_id is not None:
                    self._futures.clear_queue_state(task.request_id)
            self._running = len(control) + len(calls) + len(forwards) + len(samples)
            return control, calls, forwards, samples

    def _gather_samples(self) -> None:
        """Let sampling requests sent together decode together (lock held).

        A client sending one request per prompt (an RL loop over environments) delivers
        them a few milliseconds apart. With only sampling requests queued and the batch
        not full, wait while they keep coming (gaps under :data:`SAMPLE_ARRIVAL_GAP_S`),
        at most ``sample_batch_window_s`` after the oldest one was queued. Requests
        that already waited that long (behind other work) start at once.

        A client sending one request at a time would pay the gap on every call, so after
        :data:`LONE_WAITS_LIMIT` waits in a row that nobody joined, a lone request starts
        at once, until a batch of several requests shows concurrent callers again.
        """
        if len(self._samples) == 1 and self._lone_waits >= LONE_WAITS_LIMIT:
            return
        waited = False
        while (
            self._samples
            and len(self._samples) < self._max_sample_batch
            and not (self._control or self._runs or self._stopping)
        ):
            deadline = min(
                self._samples[-1].queued_at + SAMPLE_ARRIVAL_GAP_S,
                self._samples[0].queued_at + self._sample_batch_window_s,
            )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waited = True
            self._cond.wait(remaining)
        if len(self._samples) > 1:
            self._lone_waits = 0
        elif waited:
            self._lone_waits += 1

    def _loop(self) -> None:
        with contextlib.suppress(BaseException):  # a failed start is reported to the tasks (and model_info callers)
            self._start_engine()
        while True:
            taken = self._take()
            if taken is None:
                return
            control, calls, forwards, samples = taken
            try:
                self._start_engine()
            except BaseException as exc:  # noqa: BLE001 - reported to every waiting task
                for task in [*control, *calls, *forwards, *samples]:
                    self._fail(task, exc)
                continue
            for task in [*control, *calls]:
                self._run_round([task])
            if forwards:
                self._run_round(forwards)
            if samples:
                self._run_round(samples)
            self._count_adapters()

    def _start_engine(self) -> None:
        """Create the handle and start its engine (a no-op while it runs)."""
        first = self.info is None
        start = time.perf_counter()
        try:
            if self.handle is None:
                self.handle = self._factory(self.model_name)
            if first:
                log.info("loading base model %s", self.model_name)
            info = self.handle.start()
        except BaseException as exc:
            if first:
                log.exception("loading %s failed", self.model_name)
                ready, self._info_ready = self._info_ready, concurrent.futures.Future()  # the next try waits anew
                error = (
                    exc
                    if isinstance(exc, EngineError)
                    else ModelLoadError(f"could not load base model {self.model_name}: {exc}")
                )
                ready.set_exception(error)
                raise error from exc
            raise
        finally:
            if first:
                self.observer.engine_step("load_model", time.perf_counter() - start)
        if first:
            self.info = info
            self._info_ready.set_result(info)
            log.info("base model %s loaded", self.model_name)

    def _count_adapters(self) -> None:
        if self.observer is UNOBSERVED or self.handle is None:
            return
        try:
            self.observer.adapters_resident(self.handle.resident())
        except Exception:  # metrics never stop the worker
            log.exception("%s: counting resident adapters failed", self.model_name)

    def _run_round(self, tasks: list[Task]) -> None:
        """One engine round for ``tasks``; task i gets the round's outcome i."""
        assert self.handle is not None
        handle = self.handle
        now = time.monotonic()
        for task in tasks:
            if task.split is None or task.split.next == 0:  # a split task waited before its first part
                self.observer.queue_wait(now - task.queued_at)
        command = tasks[0].command
        if isinstance(command, ForwardBackward):
            kind = "forward_backward" if any(t.command.backward for t in tasks) else "forward"  # type: ignore[union-attr]
        elif isinstance(command, Sample):
            kind = "sample"
        else:
            kind = COMMAND_KINDS.get(type(command), type(command).__name__)

        def run() -> None:
            live = self._open_splits(tasks)
            if not live:
                return
            start = time.perf_counter()
            try:
                report = handle.run([t.engine_command for t in live])
            finally:
                self.observer.engine_step(kind, time.perf_counter() - start)
            if report.events:
                self._report_evictions(report.events)
            outcomes = report.outcomes
            if any(t.split is not None for t in live):
                outcomes = self._advance_splits(live, outcomes)
            self._count_tokens(live, outcomes)
            again: list[Task] = []
            for task, outcome in zip(live, outcomes, strict=True):
                if outcome is _MORE:
                    again.append(task)
                elif isinstance(outcome, BaseException):
                    self._fail(task, outcome)
                else:
                    self._finish(task, outcome)
            if again:
                self._requeue(again)

        around = tasks[0].around if len(tasks) == 1 else None
        try:
            if around is not None:
                around(run)
            else:
                run()
        except WorkerLost as exc:
            self._lost(tasks, exc)
        except BaseException as exc:  # noqa: BLE001
            split = [t for t in tasks if t.split is not None and t.split.checkpoint]
            if split:
                with contextlib.suppress(BaseException):  # best effort: the round failed anyway
                    self._end_splits(split, restore=True)
            for task in tasks:
                self._fail(task, exc)

    def _open_splits(self, tasks: list[Task]) -> list[Task]:
        """Open a gradient checkpoint for each split forward_backward about to run its first
        part (a round of its own, before the parts'); a task whose checkpoint cannot be
        opened fails before any of its parts runs. The tasks left to run."""
        opening = [t for t in tasks if t.split is not None and t.split.next == 0 and t.command.backward]  # type: ignore[union-attr]
        if not opening:
            return tasks
        assert self.handle is not None
        commands: list[Command] = [GradientCheckpoint(t.command.adapter_id, "open") for t in opening]  # type: ignore[union-attr]
        report = self.handle.run(commands)
        failed: set[int] = set()
        for task, outcome in zip(opening, report.outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed.add(id(task))
                self._fail(task, outcome)
            else:
                task.split.checkpoint = True  # type: ignore[union-attr]
        return [t for t in tasks if id(t) not in failed]

    def _advance_splits(self, tasks: list[Task], outcomes: list[Any]) -> list[Any]:
        """The outcomes of a round's split tasks' parts, as the tasks' outcomes: :data:`_MORE`
        while parts are left, the merged result after the last, or the error of a failed
        part. Before any task finishes, the gradients of a failed one are restored and the
        checkpoints of the others closed."""
        out = list(outcomes)
        restore: list[Task] = []
        close: list[Task] = []
        for i, (task, outcome) in enumerate(zip(tasks, outcomes, strict=True)):
            split = task.split
            if split is None:
                continue
            if isinstance(outcome, BaseException):
                restore.append(task)
                continue
            split.outputs.append(outcome)
            split.next += 1
            if split.next < len(split.parts):
                out[i] = _MORE
                continue
            merged = merge_train_outputs(split.outputs)
            if merged is None:
                # Not mergeable exactly: undo the parts and run the request whole.
                log.warning(
                    "%s: the parts' metrics of %s do not merge; running it whole", self.model_name, task.request_id
                )
                restore.append(task)
                out[i] = _MORE
                continue
            close.append(task)
            out[i] = merged
        self._end_splits(restore, restore=True)
        self._end_splits(close, restore=False)
        for i, task in enumerate(tasks):
            if task in restore and out[i] is _MORE:
                task.split = None
        return out

    def _end_splits(self, tasks: list[Task], *, restore: bool) -> None:
        """Restore (or only close) the gradient checkpoints the split ``tasks`` opened."""
        commands: list[Command] = [
            GradientCheckpoint(t.command.adapter_id, "restore" if restore else "close")  # type: ignore[union-attr]
            for t in tasks
            if t.split is not None and t.split.checkpoint
        ]
        for task in tasks:
            if task.split is not None:
                task.split.checkpoint = False
        if not commands:
            return
        assert self.handle is not None
        report = self.handle.run(commands)
        for command, outcome in zip(commands, report.outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("%s: %s of %s failed: %s", self.model_name, command.action, command.adapter_id, outcome)  # type: ignore[union-attr]

    def _requeue(self, tasks: list[Task]) -> None:
        """Split tasks with parts left go back to the head of their runs' queues (nothing
        else of their runs ran meanwhile: only this thread takes tasks)."""
        with self._cond:
            stopping = self._stopping
            if not stopping:
                for task in tasks:
                    assert task.queue_key is not None
                    self._runs.setdefault(task.queue_key, deque()).appendleft(task)
                    self._queued(task)
        if stopping:  # the engine goes away with its adapters
            for task in tasks:
                self._fail(task, Unavailable("the server shut down before this request ran"))

    def _count_tokens(self, tasks: list[Task], outcomes: list[Any]) -> None:
        """Record the round's tokens before any task finishes, so a client that has its
        result sees them in the metrics."""
        try:
            trained = sum(
                len(d.tokens)
                for t, out in zip(tasks, outcomes, strict=True)
                if isinstance(t.command, ForwardBackward)
                and t.command.backward
                and out is not _MORE
                and not isinstance(out, BaseException)
                for d in t.command.data
            )
            if trained:
                self.observer.tokens_trained(trained)
            sampled = sum(
                len(seq.tokens)
                for t, out in zip(tasks, outcomes, strict=True)
                if isinstance(t.command, Sample) and not isinstance(out, BaseException)
                for seq in out.sequences
            )
            if sampled:
                self.observer.tokens_sampled(sampled)
        except Exception:  # metrics never stop the worker
            log.exception("%s: counting the tokens of a round failed", self.model_name)

    def _report_evictions(self, events: list[Evicted]) -> None:
        sink = self._scheduler.on_evicted if self._scheduler is not None else None
        if sink is None:
            return
        try:
            sink(self.model_name, events)
        except Exception:  # recording must not stop the worker
            log.exception("%s: recording evicted adapters failed", self.model_name)

    def _lost(self, tasks: list[Task], exc: WorkerLost) -> None:
        """The engine's process died: the round's tasks and every queued training task fail
        with why (their adapters are gone); queued sampling tasks stay (they can reload)."""
        log.error("%s: %s", self.model_name, exc)
        sink = self._scheduler.on_lost if self._scheduler is not None else None
        if sink is not None:
            try:
                sink(self.model_name, str(exc))
            except Exception:
                log.exception("%s: recording the lost engine failed", self.model_name)
        with self._cond:
            queued = [t for q in self._runs.values() for t in q]
            self._runs.clear()
            for task in queued:
                self._dequeued(task)
        for task in [*tasks, *queued]:
            self._fail(task, exc)

    def _finish(self, task: Task, output: Any) -> None:
        self._untrack(task)
        if task.done.done():
            return
        try:
            payload = task.on_result(output) if task.on_result is not None else output
        except BaseException as exc:  # noqa: BLE001
            self._fail(task, exc)
            return
        if task.request_id is not None:
            try:
                self._futures.resolve(task.request_id, payload)
            except BaseException as exc:
                log.exception("could not record the result of %s", task.request_id)
                self._fail(task, exc)
                return
        if not task.done.done():
            task.done.set_result(payload)

    def _fail(self, task: Task, exc: BaseException) -> None:
        self._untrack(task)
        if task.done.done():
            return
        category = error_category(exc)
        message = error_message(exc, task.request_id)
        if category == "server" and not isinstance(exc, WorkerLost):
            log.error(
                "request %s failed: %s: %s\n%s",
                task.request_id,
                type(exc).__name__,
                exc,
                "".join(traceback.format_exception(exc)),
            )
        if task.on_error is not None:
            try:
                task.on_error(exc)
            except Exception:
                log.exception("error handler of %s failed", task.request_id)
        if task.request_id is not None:
            try:
                self._futures.fail(task.request_id, message, category)
            except Exception:
                log.exception("could not record the failure of %s", task.request_id)
        if not task.done.done():
            task.done.set_exception(exc)


class Scheduler:
    """The workers of all served base models (engines start on first use, or at startup
    with :meth:`warm`)."""

    def __init__(
        self,
        models: list[str],
        factory: HandleFactory,
        futures: FutureHub,
        limits: Limits,
    ) -> None:
        self.models = list(models)
        self.on_evicted: EventSink | None = None
        self.on_lost: LossSink | None = None
        self._owner_lock = threading.Lock()
        self._in_flight: dict[str, int] = {}  # per owner: tasks queued or running, every model
        self.admission = Admission()  # the tenants' quotas and token windows (admission.py)
        self._workers = {name: Worker(name, factory, futures, limits, self) for name in self.models}

    def queued(self, owner: str) -> int:
        """The owner's tasks queued or running now, on every base model."""
        with self._owner_lock:
            return self._in_flight.get(owner, 0)

    def _track(self, owner: str, delta: int) -> None:
        with self._owner_lock:
            count = self._in_flight.get(owner, 0) + delta
            if count > 0:
                self._in_flight[owner] = count
            else:
                self._in_flight.pop(owner, None)

    def worker(self, model_name: str) -> Worker:
        try:
            return self._workers[model_name]
        except KeyError:
            served = ", ".join(self.models)
            raise InvalidRequest(f"base model {model_name!r} is not served here; served models: {served}") from None

    def observe(self, observer_for: Callable[[str], WorkObserver]) -> None:
        """Give every worker the observer ``observer_for(model_name)`` (the server's metrics)."""
        for name, worker in self._workers.items():
            worker.observer = observer_for(name)

    def warm(self) -> None:
        """Start loading every served model now."""
        for worker in self._workers.values():
            worker.warm()

    def loaded_info(self, model_name: str) -> ModelInfo | None:
        """The model's info if its engine is loaded, else ``None``."""
        return self.worker(model_name).info

    def stop(self) -> None:
        for worker in self._workers.values():
            worker.stop()

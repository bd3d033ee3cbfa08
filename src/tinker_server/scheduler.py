"""Scheduler: per-model ordering, batching and backpressure in front of the engines.

One :class:`Worker` per served base model owns that model's engine and runs it
in a single thread (the engine is synchronous and not thread-safe). The engine
is loaded lazily, by the worker thread, on first use.

Work arrives as tasks:

* :class:`CallTask` — one engine call (create an adapter, optimizer step, save,
  load, drop, ...);
* :class:`ForwardTask` — forward / forward_backward of one request;
* :class:`SampleTask` — one sampling request.

Tasks with a ``queue_key`` (a training run id) execute strictly in arrival
order for that key; since the client serializes its submits per run, arrival
order is ``seq_id`` order, and a rejected submit (a gap) never stalls the queue.
Each loop of the worker takes: all control tasks (no key), the head task of
every run queue, and up to ``max_sample_batch`` sampling tasks. The
forward/forward_backward heads of different runs go to the engine together
(``forward_backward_many``), and so do the sampling tasks (``sample``).
When only sampling tasks are queued, the worker first lets requests that are
still arriving join the batch (see :meth:`Worker._gather_samples`).

Every task carries a ``concurrent.futures.Future`` (``task.done``) for callers
that wait in-process, and optionally a durable request id that is resolved in
the :class:`~tinker_server.futures.FutureHub` for ``retrieve_future``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .engine import AdapterNotFound, EngineError, ModelLoadError, UserInputError
from .errors import InvalidRequest, NotFound, Overloaded, ServiceError, Unavailable
from .futures import FutureHub

__all__ = [
    "CallTask",
    "ForwardTask",
    "Limits",
    "QueueSnapshot",
    "SampleTask",
    "Scheduler",
    "Task",
    "WorkObserver",
    "Worker",
    "error_category",
]

log = logging.getLogger(__name__)

EngineLoader = Callable[[str], Any]

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


@dataclass(frozen=True)
class QueueSnapshot:
    """What a worker holds right now (read-only; the console's queue page)."""

    waiting_training: int  # queued training and control tasks
    waiting_samples: int  # queued sampling requests
    running: int  # tasks of the batch the engine is working on
    loaded: bool  # the engine is loaded


@dataclass(eq=False)
class Task:
    request_id: str | None = None
    queue_key: str | None = None
    # Turns the engine's output into the response JSON (runs in the worker thread,
    # may record metadata); the identity when None.
    on_result: Callable[[Any], Any] | None = None
    # Called (in the worker thread) when the task fails.
    on_error: Callable[[BaseException], None] | None = None
    done: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    queued_at: float = 0.0  # time.monotonic() when submitted (set by Worker.submit)


@dataclass(eq=False)
class CallTask(Task):
    fn: Callable[[Any], Any] = lambda engine: None


@dataclass(eq=False)
class ForwardTask(Task):
    adapter_id: str = ""
    data: list[Any] = field(default_factory=list)
    loss_fn: str = "cross_entropy"
    loss_fn_config: dict[str, float] | None = None
    backward: bool = True


@dataclass(eq=False)
class SampleTask(Task):
    job: Any = None
    # Makes the job's adapter available (e.g. reloads a sampler from its checkpoint).
    prepare: Callable[[Any], None] | None = None


def error_category(exc: BaseException) -> str:
    """``user`` when the request was wrong, ``server`` otherwise."""
    if isinstance(exc, (UserInputError, AdapterNotFound, InvalidRequest, NotFound)):
        return "user"
    if isinstance(exc, ServiceError) and not isinstance(exc, Unavailable):
        return "user"
    return "server"


def error_message(exc: BaseException) -> str:
    if isinstance(exc, (EngineError, ServiceError)):
        return str(exc) or type(exc).__name__
    return f"internal server error: {type(exc).__name__}: {exc}"


class WorkObserver(Protocol):
    """What a worker reports about its work (the server's metrics); called from its thread.

    ``kind`` of an engine step: ``load_model``, ``forward``, ``forward_backward`` (a batch
    with at least one backward), ``sample``, or one of :data:`TIMED_CALLS`.
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

# Engine methods that call tasks and sample preparation time as engine steps; other
# attributes (``has_adapter``, ``info``, ...) are lookups and pass through untimed.
TIMED_CALLS = frozenset({"create_adapter", "copy_adapter", "drop_adapter", "optim_step", "save_adapter", "load_adapter"})


class _TimedEngine:
    """The engine as call tasks see it when a worker is observed: the methods named in
    :data:`TIMED_CALLS` report their duration, under their name, to the observer."""

    def __init__(self, engine: Any, observer: WorkObserver) -> None:
        self._engine = engine
        self._observer = observer

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._engine, name)
        if name not in TIMED_CALLS:
            return attr
        observer = self._observer

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                observer.engine_step(name, time.perf_counter() - start)

        return timed


class Worker:
    """Runs one base model's engine in its own thread."""

    def __init__(
        self,
        model_name: str,
        loader: EngineLoader,
        futures: FutureHub,
        limits: Limits,
    ) -> None:
        self.model_name = model_name
        self._loader = loader
        self._futures = futures
        self._max_pending = limits.max_pending
        self._max_pending_samples = limits.max_pending_samples
        self._max_sample_batch = limits.max_sample_batch
        self._sample_batch_window_s = limits.sample_batch_window_s
        self._lone_waits = 0  # gathering waits in a row that no other request joined
        self._cond = threading.Condition()
        self._control: deque[Task] = deque()
        self._runs: dict[str, deque[Task]] = {}
        self._samples: deque[SampleTask] = deque()
        self._pending = 0
        self._running = 0  # tasks taken by the current round
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.engine: Any = None
        self.info: Any = None
        self.observer: WorkObserver = UNOBSERVED  # set by Scheduler.observe

    # -- submitting (any thread) ------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def pending_samples(self) -> int:
        return len(self._samples)

    def snapshot(self) -> QueueSnapshot:
        with self._cond:
            waiting = len(self._control) + sum(len(queue) for queue in self._runs.values())
            return QueueSnapshot(waiting, len(self._samples), self._running, self.engine is not None)

    def check_capacity(self, *, sampling: bool = False, strict: bool = True) -> None:
        """Raise :class:`Overloaded` when the queue is full."""
        if sampling:
            limit = self._max_pending_samples if strict else 4 * self._max_pending_samples
            if len(self._samples) >= limit:
                raise Overloaded(f"the sampling queue of {self.model_name} is full; retry shortly")
        if self._pending >= self._max_pending:
            raise Overloaded(f"the request queue of {self.model_name} is full; retry shortly")

    def withdraw_sample(self, request_id: str) -> bool:
        """Take a queued sampling request out of the queue (it was cancelled); ``False``
        when it is no longer queued (running or finished)."""
        with self._cond:
            for task in self._samples:
                if task.request_id == request_id:
                    self._samples.remove(task)
                    self._pending -= 1
                    return True
        return False

    def submit(self, task: Task) -> Task:
        with self._cond:
            if self._stopping:
                raise Unavailable("the server is shutting down")
            task.queued_at = time.monotonic()
            if isinstance(task, SampleTask):
                self._samples.append(task)
            elif task.queue_key is not None:
                self._runs.setdefault(task.queue_key, deque()).append(task)
            else:
                self._control.append(task)
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"engine:{self.model_name}", daemon=True)
                self._thread.start()
            self._cond.notify()
        return task

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            leftovers = [*self._control, *self._samples, *(t for q in self._runs.values() for t in q)]
            self._control.clear()
            self._samples.clear()
            self._runs.clear()
        for task in leftovers:
            if not task.done.done():
                task.done.set_exception(Unavailable("the server shut down before this request ran"))
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker thread ------------------------------------------------------------------

    def _take(self) -> tuple[list[Task], list[Task], list[ForwardTask], list[SampleTask]] | None:
        with self._cond:
            self._running = 0
            while not (self._control or self._runs or self._samples or self._stopping):
                self._cond.wait()
            self._gather_samples()
            if self._stopping:
                return None
            control = list(self._control)
            self._control.clear()
            calls: list[Task] = []
            forwards: list[ForwardTask] = []
            for key in list(self._runs):
                queue = self._runs[key]
                head = queue.popleft()
                if not queue:
                    del self._runs[key]
                (forwards if isinstance(head, ForwardTask) else calls).append(head)  # type: ignore[arg-type]
            samples = [self._samples.popleft() for _ in range(min(len(self._samples), self._max_sample_batch))]
            self._running = len(control) + len(calls) + len(forwards) + len(samples)
            self._pending -= self._running
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
            deadline = min(self._samples[-1].queued_at + SAMPLE_ARRIVAL_GAP_S,
                           self._samples[0].queued_at + self._sample_batch_window_s)
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
        while True:
            taken = self._take()
            if taken is None:
                return
            control, calls, forwards, samples = taken
            try:
                engine = self._ensure_engine()
            except BaseException as exc:  # noqa: BLE001 - reported to every waiting task
                for task in [*control, *calls, *forwards, *samples]:
                    self._fail(task, exc)
                continue
            for task in [*control, *calls]:
                self._run_call(engine, task)  # type: ignore[arg-type]
            if forwards:
                self._run_forwards(engine, forwards)
            if samples:
                self._run_samples(engine, samples)
            self._count_adapters(engine)

    def _count_adapters(self, engine: Any) -> None:
        adapter_ids = getattr(engine, "adapter_ids", None)
        if adapter_ids is None or self.observer is UNOBSERVED:
            return
        try:
            self.observer.adapters_resident(len(adapter_ids()))
        except Exception:  # noqa: BLE001 - metrics never stop the worker
            log.exception("%s: counting resident adapters failed", self.model_name)

    def _observed(self, engine: Any) -> Any:
        return engine if self.observer is UNOBSERVED else _TimedEngine(engine, self.observer)

    def _started(self, tasks: Sequence[Task]) -> None:
        now = time.monotonic()
        for task in tasks:
            self.observer.queue_wait(now - task.queued_at)

    def _ensure_engine(self) -> Any:
        if self.engine is None:
            log.info("loading base model %s", self.model_name)
            start = time.perf_counter()
            try:
                engine = self._loader(self.model_name)
            except EngineError:
                raise
            except Exception as exc:
                log.exception("loading %s failed", self.model_name)
                raise ModelLoadError(f"could not load base model {self.model_name}: {exc}") from exc
            finally:
                self.observer.engine_step("load_model", time.perf_counter() - start)
            self.info = engine.info
            self.engine = engine
            log.info("base model %s loaded", self.model_name)
        return self.engine

    def _run_call(self, engine: Any, task: CallTask) -> None:
        self._started([task])
        try:
            output = task.fn(self._observed(engine))
        except BaseException as exc:  # noqa: BLE001
            self._fail(task, exc)
            return
        self._finish(task, output)

    def _run_forwards(self, engine: Any, tasks: list[ForwardTask]) -> None:
        self._started(tasks)
        items = [(t.adapter_id, t.data, t.loss_fn, t.loss_fn_config, t.backward) for t in tasks]
        kind = "forward_backward" if any(t.backward for t in tasks) else "forward"

        def count(outputs: list[Any]) -> None:
            ok = [t for t, out in zip(tasks, outputs) if t.backward and not isinstance(out, BaseException)]
            if ok:
                self.observer.tokens_trained(sum(len(datum.tokens) for t in ok for datum in t.data))

        self._run_batch(tasks, lambda: engine.forward_backward_many(items), kind, count)

    def _run_samples(self, engine: Any, tasks: list[SampleTask]) -> None:
        self._started(tasks)
        ready: list[SampleTask] = []
        for task in tasks:
            try:
                if task.prepare is not None:
                    task.prepare(self._observed(engine))
            except BaseException as exc:  # noqa: BLE001
                self._fail(task, exc)
                continue
            ready.append(task)
        if ready:
            log.debug("%s: sampling %d requests in one batch", self.model_name, len(ready))

            def count(outputs: list[Any]) -> None:
                tokens = sum(len(s.tokens) for out in outputs if not isinstance(out, BaseException) for s in out.sequences)
                if tokens:
                    self.observer.tokens_sampled(tokens)

            self._run_batch(ready, lambda: engine.sample([t.job for t in ready]), "sample", count)

    def _run_batch(
        self, tasks: Sequence[Task], run: Callable[[], list[Any]], kind: str, count: Callable[[list[Any]], None]
    ) -> None:
        """One engine call for several tasks; its i-th output (a result or an error) is task i's.
        The call's metrics (``count(outputs)``, its duration) are recorded before any task
        finishes, so a client that has its result sees them."""
        start = time.perf_counter()
        try:
            outputs = run()
        except BaseException as exc:  # noqa: BLE001
            self.observer.engine_step(kind, time.perf_counter() - start)
            for task in tasks:
                self._fail(task, exc)
            return
        self.observer.engine_step(kind, time.perf_counter() - start)
        try:
            count(outputs)
        except Exception:  # noqa: BLE001 - metrics never stop the worker
            log.exception("%s: counting the tokens of a %s batch failed", self.model_name, kind)
        for task, output in zip(tasks, outputs, strict=True):
            if isinstance(output, BaseException):
                self._fail(task, output)
            else:
                self._finish(task, output)

    def _finish(self, task: Task, output: Any) -> None:
        try:
            payload = task.on_result(output) if task.on_result is not None else output
        except BaseException as exc:  # noqa: BLE001
            self._fail(task, exc)
            return
        if task.request_id is not None:
            try:
                self._futures.resolve(task.request_id, payload)
            except BaseException as exc:  # noqa: BLE001
                log.exception("could not record the result of %s", task.request_id)
                self._fail(task, exc)
                return
        if not task.done.done():
            task.done.set_result(payload)

    def _fail(self, task: Task, exc: BaseException) -> None:
        category = error_category(exc)
        message = error_message(exc)
        if category == "server":
            log.error(
                "request %s failed: %s\n%s",
                task.request_id,
                message,
                "".join(traceback.format_exception(exc)),
            )
        if task.on_error is not None:
            try:
                task.on_error(exc)
            except Exception:  # noqa: BLE001
                log.exception("error handler of %s failed", task.request_id)
        if task.request_id is not None:
            try:
                self._futures.fail(task.request_id, message, category)
            except Exception:  # noqa: BLE001
                log.exception("could not record the failure of %s", task.request_id)
        if not task.done.done():
            task.done.set_exception(exc)


class Scheduler:
    """The workers of all served base models, created on first use."""

    def __init__(
        self,
        models: list[str],
        loader: EngineLoader,
        futures: FutureHub,
        limits: Limits,
    ) -> None:
        self.models = list(models)
        self._workers = {name: Worker(name, loader, futures, limits) for name in self.models}

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

    def loaded_info(self, model_name: str) -> Any:
        """The model's info if its engine is loaded, else ``None``."""
        return self.worker(model_name).info

    def stop(self) -> None:
        for worker in self._workers.values():
            worker.stop()

"""Per-run training metrics and per-sampler sampling activity, kept by the server.

:meth:`RunMetrics.record` is a :data:`~tinker_server.futures.ResolveHook`: it runs
inside the transaction that stores a finished request's result, so a result and its
metrics are committed together, with no extra commit on the worker thread.

* ``forward_backward``, ``forward``, ``optim_step``: every metric of the result
  (``loss:sum``, ``step:max``, ...) becomes a :class:`~tinker_server.db.RunMetricRow`
  with the request's ``seq_id`` and its **step**: 1 + the number of ``optim_step``
  results recorded for the run before it (an ``optim_step`` closes the step its
  ``forward_backward`` calls belong to).
* ``sample``: the sampler's :class:`~tinker_server.db.SamplerActivityRow` counts the
  request, its sequences and sampled tokens.

Reading (:func:`load_series`) folds the rows of one step into one point per metric by
the reduction the name ends with (``:sum`` adds chunks and accumulated micro-batches,
``:mean`` averages, ``:max``/``:min``), so a client that splits a step into several
requests still shows one point per step. A run without any ``optim_step`` shows one
point per request (by ``seq_id``) instead. Runs longer than :data:`MAX_POINTS` steps are
read in buckets of steps, aggregated by the database: the mean of each bucket's steps
and its extremes.

Retention: at most ``max_rows_per_run`` rows per run (default :data:`MAX_ROWS_PER_RUN`:
12,500 steps of 4 metrics); past it, :meth:`RunMetrics.enforce_retention` (the
sweeper) deletes every second step of the run's older half, so the whole curve stays
and its older part loses resolution. Activity rows are one per sampler. NaN is
stored as NULL (SQLite has no NaN).

Throughput: the tokens of finished training and sampling results per base model over
the last :data:`THROUGHPUT_WINDOW_S` seconds, in memory (:meth:`RunMetrics.throughput`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import wire
from .db import Database, RunMetricRow, SamplerActivityRow, SamplerRow, TrainingRunRow, utcnow
from .futures import Finished
from .paths import parse_tinker_path

__all__ = [
    "MAX_POINTS",
    "MAX_ROWS_PER_RUN",
    "THROUGHPUT_WINDOW_S",
    "TRAINING_KINDS",
    "RunMetrics",
    "RunSeries",
    "Series",
    "Throughput",
    "load_points",
    "load_series",
    "thin_run",
]

log = logging.getLogger(__name__)

TRAINING_KINDS = ("forward_backward", "forward", "optim_step")
MAX_ROWS_PER_RUN = 50_000
THROUGHPUT_WINDOW_S = 60.0
# In-memory lookups (run → base model, sampler → run) are dropped past this many entries.
_CACHE_LIMIT = 50_000


@dataclass(frozen=True)
class Throughput:
    """Tokens per second over the last ``window_s`` seconds."""

    train_tokens_per_s: float
    sampled_tokens_per_s: float
    window_s: float


@dataclass(frozen=True)
class _SamplerInfo:
    run_id: str | None
    base_model: str


class RunMetrics:
    def __init__(
        self,
        db: Database,
        *,
        max_rows_per_run: int = MAX_ROWS_PER_RUN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._max_rows = max_rows_per_run
        self._clock = clock
        self._lock = threading.Lock()
        self._steps: dict[str, int] = {}  # run → optim_steps recorded (loaded on first use)
        self._grown: set[str] = set()  # runs with rows added since the last retention pass
        self._run_models: dict[str, str] = {}
        self._samplers: dict[str, _SamplerInfo] = {}
        # base model → (monotonic time, training tokens, sampled tokens) of recent results
        self._recent: dict[str, deque[tuple[float, int, int]]] = {}

    # -- recording (worker threads, inside the resolving transaction) -----------------------

    def record(self, session: Session, finished: Finished, result: Any) -> None:
        """The resolve hook: the metrics of a training result, the counters of a sample."""
        if finished.model_id is None:
            return
        # A savepoint: whatever goes wrong here rolls back only these rows, never the result.
        if finished.kind in TRAINING_KINDS:
            with session.begin_nested():
                self._record_training(session, finished, finished.model_id, result)
        elif finished.kind == "sample" and isinstance(result, wire.SampleResult):
            with session.begin_nested():
                self._record_sample(session, finished, finished.model_id, result)

    def _record_training(self, session: Session, finished: Finished, run_id: str, result: Any) -> None:
        metrics = _metrics_of(result)
        with self._lock:
            done = self._steps.get(run_id)
        if done is None:
            done = int(
                session.scalar(
                    sa.select(sa.func.max(RunMetricRow.step)).where(
                        RunMetricRow.run_id == run_id, RunMetricRow.kind == "optim_step"
                    )
                )
                or 0
            )
        step = done + 1
        if metrics:
            now = utcnow()
            session.execute(
                sa.insert(RunMetricRow),
                [
                    {
                        "run_id": run_id,
                        "step": step,
                        "seq_id": finished.seq_id,
                        "time": now,
                        "kind": finished.kind,
                        "name": name[:200],
                        "value": value if not math.isnan(value) else None,
                    }
                    for name, value in metrics.items()
                ],
            )
        with self._lock:
            self._steps[run_id] = step if finished.kind == "optim_step" else done
            if metrics:
                self._grown.add(run_id)
        if isinstance(result, wire.TrainResult):
            tokens = sum(_datum_tokens(out) for out in result.loss_fn_outputs)
            self._count_tokens(self._run_model(session, run_id), tokens, 0)

    def _record_sample(self, session: Session, finished: Finished, sampler_id: str, result: wire.SampleResult) -> None:
        info = self._sampler(session, sampler_id)
        if info is None:
            return
        n = len(result.sequences)
        tokens = sum(int(seq.tokens.shape[0]) for seq in result.sequences)
        now = utcnow()
        updated = session.execute(
            sa.update(SamplerActivityRow)
            .where(SamplerActivityRow.sampler_id == sampler_id)
            .values(
                requests=SamplerActivityRow.requests + 1,
                sequences=SamplerActivityRow.sequences + n,
                tokens=SamplerActivityRow.tokens + tokens,
                last_time=now,
            )
        )
        if not int(getattr(updated, "rowcount", 0) or 0):
            session.execute(
                sa.insert(SamplerActivityRow).values(
                    sampler_id=sampler_id,
                    owner=finished.owner,
                    run_id=info.run_id,
                    requests=1,
                    sequences=n,
                    tokens=tokens,
                    first_time=now,
                    last_time=now,
                )
            )
        self._count_tokens(info.base_model, 0, tokens)

    def _run_model(self, session: Session, run_id: str) -> str | None:
        with self._lock:
            model = self._run_models.get(run_id)
        if model is None:
            model = session.scalar(sa.select(TrainingRunRow.base_model).where(TrainingRunRow.id == run_id))
            if model is not None:
                with self._lock:
                    if len(self._run_models) >= _CACHE_LIMIT:
                        self._run_models.clear()
                    self._run_models[run_id] = model
        return model

    def _sampler(self, session: Session, sampler_id: str) -> _SamplerInfo | None:
        with self._lock:
            info = self._samplers.get(sampler_id)
        if info is None:
            row = session.get(SamplerRow, sampler_id)
            if row is None:
                return None
            run_id = row.source_run_id
            if run_id is None and row.model_path is not None:
                try:
                    run_id = parse_tinker_path(row.model_path).run_id
                except Exception:  # noqa: BLE001 - a path that parsed at creation; be safe anyway
                    run_id = None
            info = _SamplerInfo(run_id, row.base_model)
            with self._lock:
                if len(self._samplers) >= _CACHE_LIMIT:
                    self._samplers.clear()
                self._samplers[sampler_id] = info
        return info

    def _count_tokens(self, base_model: str | None, train: int, sampled: int) -> None:
        if base_model is None or not (train or sampled):
            return
        now = self._clock()
        with self._lock:
            recent = self._recent.setdefault(base_model, deque())
            recent.append((now, train, sampled))
            _trim(recent, now)

    # -- reading ----------------------------------------------------------------------------

    def throughput(self, base_model: str) -> Throughput:
        now = self._clock()
        with self._lock:
            recent = self._recent.get(base_model)
            if recent is None:
                return Throughput(0.0, 0.0, THROUGHPUT_WINDOW_S)
            _trim(recent, now)
            train = sum(item[1] for item in recent)
            sampled = sum(item[2] for item in recent)
        return Throughput(train / THROUGHPUT_WINDOW_S, sampled / THROUGHPUT_WINDOW_S, THROUGHPUT_WINDOW_S)

    # -- retention (the sweeper) ------------------------------------------------------------

    def enforce_retention(self) -> int:
        """Thin runs over ``max_rows_per_run`` rows; returns how many rows went. Only runs
        that gained rows since the last pass are looked at (see :func:`thin_run`)."""
        with self._lock:
            runs, self._grown = self._grown, set()
        removed = 0
        for run_id in sorted(runs):
            gone = thin_run(self._db, run_id, self._max_rows)
            if gone:
                removed += gone
                log.info("run %s: thinned its metrics by %d row(s) (at most %d kept)", run_id, gone, self._max_rows)
        return removed


def thin_run(db: Database, run_id: str, max_rows: int) -> int:
    """While the run has more than ``max_rows`` metric rows, delete every second step of
    its older half: the whole curve stays (its first and last steps too), its older part
    at a lower resolution. A run whose rows all have one step (no ``optim_step`` yet)
    loses its oldest rows instead."""
    m = RunMetricRow
    removed = 0
    for _ in range(32):
        with db.session() as s:
            count = int(s.scalar(sa.select(sa.func.count()).select_from(m).where(m.run_id == run_id)) or 0)
            if count <= max_rows:
                break
            low, high = s.execute(sa.select(sa.func.min(m.step), sa.func.max(m.step)).where(m.run_id == run_id)).one()
            if low == high:
                cut = s.scalar(
                    sa.select(m.pk).where(m.run_id == run_id).order_by(m.pk.desc()).limit(1).offset(max_rows)
                )
                result = s.execute(sa.delete(m).where(m.run_id == run_id, m.pk <= cut))
                removed += int(getattr(result, "rowcount", 0) or 0)
                break
            drop: list[int] = []
            for upto in (
                (low + high) // 2,
                high - 1,
            ):  # the older half; when that is down to one step, all but the last
                steps = s.scalars(
                    sa.select(m.step).where(m.run_id == run_id, m.step <= upto).distinct().order_by(m.step)
                ).all()
                drop = list(steps[1::2])  # never the first step
                if drop:
                    break
            if not drop:
                break
            for start in range(0, len(drop), 500):
                result = s.execute(sa.delete(m).where(m.run_id == run_id, m.step.in_(drop[start : start + 500])))
                removed += int(getattr(result, "rowcount", 0) or 0)
    return removed


def _trim(recent: deque[tuple[float, int, int]], now: float) -> None:
    while recent and recent[0][0] < now - THROUGHPUT_WINDOW_S:
        recent.popleft()


def _metrics_of(result: Any) -> dict[str, float]:
    """The metrics a training result carries: ``TrainResult.metrics``, or an
    ``optim_step`` answer's ``{"metrics": {...}}``."""
    if isinstance(result, wire.TrainResult):
        raw: Any = result.metrics
    elif isinstance(result, dict):
        raw = result.get("metrics") or {}
    else:
        raw = getattr(result, "metrics", None) or {}
    out: dict[str, float] = {}
    for name, value in raw.items():
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _datum_tokens(outputs: dict[str, Any]) -> int:
    array = outputs.get("logprobs")
    if array is None and outputs:
        array = next(iter(outputs.values()))
    shape = getattr(array, "shape", None)
    return int(shape[0]) if shape else 0


# -- series for the console ---------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One metric of one kind of request: ``values[i]`` at ``steps[i]`` (``None`` = NaN).

    Exact (``lows``/``highs`` are ``None``): one point per step. Reduced (a long run):
    one point per bucket of steps, at its middle, with the mean of its steps and the
    lowest and highest single value (``None`` where a chunked ``:sum`` step makes
    single values incomparable)."""

    kind: str
    name: str
    steps: list[float]
    values: list[float | None]
    lows: list[float | None] | None = None
    highs: list[float | None] | None = None


@dataclass(frozen=True)
class RunSeries:
    """Every series of a run. ``x`` is what ``steps`` count: ``"step"`` (optimizer steps),
    or ``"seq_id"`` for a run without any ``optim_step`` (one point per request).
    ``bucket``: steps per point (1 = exact)."""

    x: str
    bucket: int
    series: list[Series]


MAX_POINTS = 1000  # per series; longer runs are read in buckets of steps
_KIND_ORDER = {kind: i for i, kind in enumerate(TRAINING_KINDS)}


def _reduction(name: str) -> str:
    return name.rsplit(":", 1)[-1] if ":" in name else "mean"


def _add_point(item: Series, x: float, value: float | None, reduction: str, folded: int) -> int:
    """Append one request's value at step ``x`` to ``item``, folding it into the last point
    when that is the same step (``folded`` requests so far); returns the new count."""
    if item.steps and item.steps[-1] == x:
        item.values[-1] = _fold(reduction, item.values[-1], value, folded)
        return folded + 1
    item.steps.append(x)
    item.values.append(value)
    return 1


def _fold(reduction: str, a: float | None, b: float | None, n: int) -> float | None:
    """Combine a step's value so far (``a``, from ``n`` requests) with one more request's (``b``)."""
    if a is None or b is None:
        return None
    if reduction == "sum":
        return a + b
    if reduction == "max":
        return max(a, b)
    if reduction == "min":
        return min(a, b)
    return a + (b - a) / (n + 1)  # running mean


def load_series(session: Session, run_id: str, max_points: int = MAX_POINTS) -> RunSeries:
    """The run's metrics, one point per step (or per bucket of steps for a long run; see
    :class:`Series`); several requests of one step fold by the reduction their name ends with."""
    m = RunMetricRow
    has_steps = session.scalar(sa.select(m.pk).where(m.run_id == run_id, m.kind == "optim_step").limit(1)) is not None
    x_col = m.step if has_steps else m.seq_id
    x_name = "step" if has_steps else "seq_id"
    top = session.scalar(sa.select(sa.func.max(x_col)).where(m.run_id == run_id))
    if top is None:
        return RunSeries(x_name, 1, [])
    bucket = max(1, -(-int(top) // max_points))
    series = _exact(session, run_id, x_col) if bucket == 1 else _bucketed(session, run_id, x_col, bucket)
    return RunSeries(x_name, bucket, sorted(series, key=_series_order))


def _exact(session: Session, run_id: str, x_col: Any) -> list[Series]:
    m = RunMetricRow
    rows = session.execute(
        sa.select(m.kind, m.name, x_col, m.value).where(m.run_id == run_id).order_by(m.kind, m.name, x_col)
    )
    out: list[Series] = []
    item: Series | None = None
    reduction = "mean"
    folded = 0
    for kind, name, x, value in rows:
        if x is None:  # a request without a seq_id, in a run without optimizer steps
            continue
        if item is None or item.kind != kind or item.name != name:
            item = Series(kind, name, [], [])
            out.append(item)
            reduction = _reduction(name)
        folded = _add_point(item, x, value, reduction, folded)
    return out


def _bucketed(session: Session, run_id: str, x_col: Any, bucket: int) -> list[Series]:
    m = RunMetricRow
    group = x_col // bucket
    rows = session.execute(
        sa.select(
            m.kind,
            m.name,
            sa.func.min(x_col),
            sa.func.max(x_col),
            sa.func.sum(m.value),
            sa.func.count(m.value),
            sa.func.count(),
            sa.func.count(sa.distinct(x_col)),
            sa.func.min(m.value),
            sa.func.max(m.value),
        )
        .where(m.run_id == run_id)
        .group_by(m.kind, m.name, group)
        .order_by(m.kind, m.name, group)
    )
    out: list[Series] = []
    item: Series | None = None
    for kind, name, first, last, total, finite, rows_n, steps_n, low, high in rows:
        if item is None or item.kind != kind or item.name != name:
            item = Series(kind, name, [], [], [], [])
            out.append(item)
        assert item.lows is not None and item.highs is not None
        item.steps.append((first + last) / 2)
        if finite == 0:
            item.values.append(None)
            item.lows.append(None)
            item.highs.append(None)
            continue
        summed = _reduction(name) == "sum"
        # The mean of the bucket's steps: a chunked ":sum" step is the sum of its requests.
        item.values.append(total / steps_n if summed else total / finite)
        comparable = not summed or rows_n == steps_n
        item.lows.append(low if comparable else None)
        item.highs.append(high if comparable else None)
    return out


def _series_order(item: Series) -> tuple[int, int, str]:
    # Losses first within a kind, then the rest by name.
    return (_KIND_ORDER.get(item.kind, 99), 0 if item.name.startswith("loss") else 1, item.name)


def load_points(session: Session, run_id: str, kind: str, name: str, after: float, limit: int) -> tuple[str, Series]:
    """One series exactly, one point per step, for the ``limit`` steps after ``after``
    (``x`` as in :func:`load_series`): the full-resolution values of a long run."""
    m = RunMetricRow
    has_steps = session.scalar(sa.select(m.pk).where(m.run_id == run_id, m.kind == "optim_step").limit(1)) is not None
    x_col = m.step if has_steps else m.seq_id
    where = sa.and_(m.run_id == run_id, m.kind == kind, m.name == name, x_col > after)
    upper = session.scalar(
        sa.select(sa.func.max(sa.literal_column("x"))).select_from(
            sa.select(x_col.label("x")).where(where).distinct().order_by(x_col).limit(limit).subquery()
        )
    )
    item = Series(kind, name, [], [])
    if upper is None:
        return ("step" if has_steps else "seq_id"), item
    reduction = _reduction(name)
    folded = 0
    for x, value in session.execute(sa.select(x_col, m.value).where(where, x_col <= upper).order_by(x_col)):
        # ignore: x is never NULL here (x_col <= upper), which the column's type cannot say
        folded = _add_point(item, x, value, reduction, folded)  # type: ignore[arg-type]
    return ("step" if has_steps else "seq_id"), item

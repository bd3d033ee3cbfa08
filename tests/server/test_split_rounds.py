"""A big forward/forward_backward runs in parts of whole datums, one per round of its run's
queue (``Limits.max_tokens_per_round``): other tenants' work goes in between, the merged
result equals the unsplit one, and a failing part leaves the gradients as they were.

Scheduler level, with the fake engine behind a real :class:`LocalEngine` and
:class:`Worker`; the last test goes through HTTP (the setting's wiring).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import pytest

from tinker_server.db import Database
from tinker_server.engine import LoraSpec, TrainDatum, TrainOutput, UserInputError
from tinker_server.engine.api import Command, CreateAdapter, EngineCore, ForwardBackward, OptimStep
from tinker_server.engine.host import LocalEngine
from tinker_server.engine.messages import AdamConfig
from tinker_server.futures import FutureHub
from tinker_server.scheduler import Limits, Task, Worker, merge_train_outputs, split_forward_backward

from .conftest import FAKE_MODEL, Api, datum, fb_body
from .fake_engine import BAD_TOKEN, CRASH_TOKEN, FakeEngine

BUDGET = 100  # tokens per round in these tests


def _datum(first: int, n: int, weight: float) -> TrainDatum:
    tokens = [first] + [(first + k) % 50 + 1 for k in range(1, n)]
    return TrainDatum(
        tokens=tokens,
        loss_fn_inputs={
            "target_tokens": np.array(tokens[1:] + tokens[:1], dtype=np.int64),
            "weights": np.full(n, weight, dtype=np.float32),
        },
    )


def _big(first: int = 1) -> list[TrainDatum]:
    """Six datums of 40 tokens: parts of two datums (80 tokens) each, three parts."""
    return [_datum(first if i == 0 else i + 1, 40, 0.5 + i) for i in range(6)]


class Recorder:
    """A WorkObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.trained: list[int] = []
        self.waits = 0

    def queue_wait(self, seconds: float) -> None:
        self.waits += 1

    def engine_step(self, kind: str, seconds: float) -> None:
        pass

    def tokens_trained(self, count: int) -> None:
        self.trained.append(count)

    def tokens_sampled(self, count: int) -> None:
        pass

    def adapters_resident(self, count: int) -> None:
        pass


@pytest.fixture
def make_worker(tmp_path: pathlib.Path) -> Iterator[Callable[[FakeEngine, int | None], Worker]]:
    workers: list[Worker] = []

    def make(engine: FakeEngine, budget: int | None) -> Worker:
        hub = FutureHub(Database(f"sqlite:///{tmp_path / f'futures-{len(workers)}.db'}"))
        limits = Limits(max_pending=100, max_pending_samples=100, max_sample_batch=8, max_tokens_per_round=budget)
        worker = Worker(engine.info.name, lambda _name: LocalEngine(lambda: cast(EngineCore, engine)), hub, limits)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()


def _run(worker: Worker, command: Command, run: str, owner: str = "tenant-a", **kw: Any) -> Task:
    return worker.submit(Task(command, queue_key=run, owner=owner, cost=_tokens(command), **kw))


def _tokens(command: Command) -> int:
    return sum(len(d.tokens) for d in command.data) if isinstance(command, ForwardBackward) else 0


def _create(worker: Worker, *adapters: str) -> None:
    for adapter in adapters:
        _run(worker, CreateAdapter(adapter, LoraSpec(rank=4)), adapter).done.result(10)


def _fb_calls(engine: FakeEngine, adapter: str) -> int:
    return sum(1 for name, arg in engine.calls if name == "forward_backward" and arg == adapter)


def _same(a: TrainOutput, b: TrainOutput) -> None:
    assert a.metrics == b.metrics
    assert len(a.loss_fn_outputs) == len(b.loss_fn_outputs)
    for x, y in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


# -- the policy ----------------------------------------------------------------------------


def test_split_keeps_whole_datums_in_order() -> None:
    data = [_datum(1, n, 1.0) for n in (30, 30, 50, 150, 10, 10)]
    command = ForwardBackward("a", data, "cross_entropy")
    parts = split_forward_backward(command, BUDGET)
    assert parts is not None
    assert [[len(d.tokens) for d in p.data] for p in parts] == [[30, 30], [50], [150], [10, 10]]
    assert [d for p in parts for d in p.data] == data
    assert all(p.loss_fn == "cross_entropy" and p.backward and p.adapter_id == "a" for p in parts)
    assert split_forward_backward(command, 1000) is None  # fits in one round
    assert split_forward_backward(ForwardBackward("a", [_datum(1, 500, 1.0)], "cross_entropy"), BUDGET) is None


def test_merge_adds_sums_and_refuses_what_it_cannot_merge_exactly() -> None:
    one = TrainOutput([{"logprobs": np.zeros(2, np.float32)}], {"loss:sum": 1.5, "x:max": 2.0})
    two = TrainOutput([{"logprobs": np.ones(3, np.float32)}], {"loss:sum": 2.25, "x:max": 1.0})
    merged = merge_train_outputs([one, two])
    assert merged is not None
    assert merged.metrics == {"loss:sum": 3.75, "x:max": 2.0}
    assert [len(o["logprobs"]) for o in merged.loss_fn_outputs] == [2, 3]
    assert merge_train_outputs([TrainOutput([], {"loss:mean": 1.0})] * 2) is None
    assert merge_train_outputs([one, TrainOutput([], {"loss:sum": 1.0})]) is None  # different keys


# -- the worker ------------------------------------------------------------------------------


def test_split_result_and_gradients_equal_unsplit(
    tmp_path: pathlib.Path, make_worker: Callable[[FakeEngine, int | None], Worker]
) -> None:
    outs: dict[str, TrainOutput] = {}
    engines: dict[str, FakeEngine] = {}
    for name, budget in (("whole", None), ("split", BUDGET)):
        engine = engines[name] = FakeEngine(FAKE_MODEL, tmp_path / name)
        worker = make_worker(engine, budget)
        recorder = Recorder()
        worker.observer = recorder
        _create(worker, "run")
        # Some gradient from before, then the big request, then a step that uses both.
        _run(worker, ForwardBackward("run", [_datum(5, 7, 2.0)], "cross_entropy"), "run").done.result(10)
        recorder.trained.clear()
        recorder.waits = 0
        task = _run(worker, ForwardBackward("run", _big(), "cross_entropy"), "run")
        outs[name] = task.done.result(10)
        assert recorder.trained == [240]  # the request's tokens, counted once
        assert recorder.waits == 1  # one request waited in the queue once
        assert engine.grad_checkpoints == {}  # nothing kept after the last part
        _run(worker, OptimStep("run", AdamConfig(learning_rate=0.01)), "run").done.result(10)
        # The next forward sees the weights the step made.
        outs[name + "-after"] = _run(
            worker, ForwardBackward("run", _big(), "cross_entropy", backward=False), "run"
        ).done.result(10)
    _same(outs["split"], outs["whole"])
    _same(outs["split-after"], outs["whole-after"])
    assert engines["split"].adapters["run"]["w"] == engines["whole"].adapters["run"]["w"] != 0.0
    # Three parts of the forward_backward (and three of the forward after), with one
    # checkpoint opened and closed around the forward_backward only.
    assert [_fb_calls(engines[n], "run") for n in ("whole", "split")] == [2, 4]
    assert [engines[n].calls.count(("forward", "run")) for n in ("whole", "split")] == [1, 3]
    checkpoints = [arg for name, arg in engines["split"].calls if name == "gradient_checkpoint"]
    assert checkpoints == [("run", "open"), ("run", "close")]


def test_another_tenant_runs_between_the_parts_and_the_step_waits_for_all(
    tmp_path: pathlib.Path, make_worker: Callable[[FakeEngine, int | None], Worker]
) -> None:
    engine = FakeEngine(FAKE_MODEL, tmp_path)
    worker = make_worker(engine, BUDGET)
    _create(worker, "run-a", "run-b")
    engine.calls.clear()
    engine.gate.clear()
    try:
        big = _run(worker, ForwardBackward("run-a", _big(), "cross_entropy"), "run-a")
        step = _run(worker, OptimStep("run-a", AdamConfig(learning_rate=0.01)), "run-a")
        deadline = time.monotonic() + 10
        while not engine.calls:  # the worker holds the first part (its checkpoint) in the engine
            assert time.monotonic() < deadline
            time.sleep(0.005)
        small = _run(worker, ForwardBackward("run-b", [_datum(3, 5, 1.0)], "cross_entropy"), "run-b", owner="tenant-b")
    finally:
        engine.gate.set()
    step.done.result(10)
    small.done.result(10)
    assert len(big.done.result(10).loss_fn_outputs) == 6
    order = [(name, arg) for name, arg in engine.calls if name in ("forward_backward", "optim_step")]
    a_parts = [i for i, call in enumerate(order) if call == ("forward_backward", "run-a")]
    b_index = order.index(("forward_backward", "run-b"))
    assert len(a_parts) == 3
    assert a_parts[0] < b_index < a_parts[-1]  # B's request ran before A's last part
    assert order.index(("optim_step", "run-a")) > a_parts[-1]  # A's step after all its parts


@pytest.mark.parametrize("trigger", [BAD_TOKEN, CRASH_TOKEN])
def test_a_failing_part_restores_the_gradients_and_stops(
    tmp_path: pathlib.Path, make_worker: Callable[[FakeEngine, int | None], Worker], trigger: int
) -> None:
    engine = FakeEngine(FAKE_MODEL, tmp_path)
    worker = make_worker(engine, BUDGET)
    recorder = Recorder()
    worker.observer = recorder
    _create(worker, "run")
    _run(worker, ForwardBackward("run", [_datum(5, 7, 2.0)], "cross_entropy"), "run").done.result(10)
    before = engine.adapters["run"]["grad"]
    assert before != 0.0
    data = _big()
    data[2] = _datum(trigger, 40, 1.0)  # the first datum of the second part
    recorder.trained.clear()
    engine.calls.clear()
    errors: list[BaseException] = []
    task = _run(worker, ForwardBackward("run", data, "cross_entropy"), "run", on_error=errors.append)
    expected = UserInputError if trigger == BAD_TOKEN else ZeroDivisionError
    with pytest.raises(expected):
        task.done.result(10)
    assert len(errors) == 1  # the request failed once
    assert engine.adapters["run"]["grad"] == before  # the first part's gradient is gone too
    assert _fb_calls(engine, "run") == 2  # the third part never ran
    assert ("gradient_checkpoint", ("run", "restore")) in engine.calls
    assert engine.grad_checkpoints == {}
    assert recorder.trained == []  # nothing counted as trained
    # The run goes on: a later step uses the gradients from before.
    metrics = _run(worker, OptimStep("run", AdamConfig(learning_rate=0.01)), "run").done.result(10)
    assert metrics["step"] == 1.0
    assert engine.adapters["run"]["w"] == pytest.approx(-0.01 * before)


def test_unmergeable_metrics_run_the_request_whole(
    tmp_path: pathlib.Path, make_worker: Callable[[FakeEngine, int | None], Worker]
) -> None:
    engine = FakeEngine(FAKE_MODEL, tmp_path)
    original = engine.forward_backward

    def with_mean(*args: Any, **kwargs: Any) -> TrainOutput:
        out = original(*args, **kwargs)
        out.metrics["tokens:mean"] = float(len(out.loss_fn_outputs))
        return out

    engine.forward_backward = with_mean  # type: ignore[method-assign]
    worker = make_worker(engine, BUDGET)
    _create(worker, "run")
    out = _run(worker, ForwardBackward("run", _big(), "cross_entropy"), "run").done.result(10)
    assert out.metrics["tokens:mean"] == 6.0  # the whole request's, not a merge of the parts'
    assert _fb_calls(engine, "run") == 4  # three parts, undone, then the whole
    grad = engine.adapters["run"]["grad"]
    whole = FakeEngine(FAKE_MODEL, tmp_path / "whole")
    whole.create_adapter("run", LoraSpec(rank=4))
    whole.forward_backward("run", _big(), "cross_entropy", None, backward=True)
    assert grad == whole.adapters["run"]["grad"]  # counted once


# -- through HTTP ----------------------------------------------------------------------------


def test_the_setting_splits_requests_through_http(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine]
) -> None:
    api = make_fake_server(max_tokens_per_round=BUDGET)
    model_id = api.create_model(api.session())
    data = [datum([i % 50 + 1 for i in range(40)]) for _ in range(6)]
    out = api.result("forward_backward", fb_body(model_id, 1, data))
    assert out["metrics"]["loss:sum"] == 2.0 * 240  # w = 0: logprob -1 - 1 per token, weight 1
    assert len(out["loss_fn_outputs"]) == 6
    assert _fb_calls(fake_engines[FAKE_MODEL], model_id) == 3

"""A forward_backward run in parts by the server's worker (``Limits.max_tokens_per_round``)
gives what the same request run whole gives, on the real engine (tiny Llama, fp32): losses,
per-datum logprobs, gradients, and the weights after ``optim_step``; a failing part leaves
the gradients as they were before the first part.

The parts go through the model in different micro-batches than the whole request, so rows
are padded differently and gradients are summed in another order: equal within 1e-6 of each
tensor's scale (see test_tenant_independence.py for why not bitwise).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tinker_server.db import Database
from tinker_server.engine import Engine, LoraSpec, TrainDatum, TrainOutput, UserInputError
from tinker_server.engine.api import ForwardBackward, OptimStep
from tinker_server.engine.host import LocalEngine
from tinker_server.engine.messages import AdamConfig
from tinker_server.futures import FutureHub
from tinker_server.scheduler import Limits, Task, Worker

from .conftest import adapter_grads, adapter_tensors, random_datums, randomize_adapter

TOL = 1e-6
BUDGET = 24  # tokens per round: the requests below run in 3-5 parts
ADAM = AdamConfig(learning_rate=0.01)


@pytest.fixture
def worker(engine: Engine, tmp_path: pathlib.Path) -> Iterator[Worker]:
    hub = FutureHub(Database(f"sqlite:///{tmp_path / 'futures.db'}"))
    limits = Limits(max_pending=16, max_pending_samples=16, max_sample_batch=4, max_tokens_per_round=BUDGET)
    worker = Worker(engine.info.name, lambda _name: LocalEngine(lambda: engine), hub, limits)
    yield worker
    worker.stop()


def _submit(worker: Worker, command: ForwardBackward | OptimStep) -> object:
    cost = sum(len(d.tokens) for d in command.data) if isinstance(command, ForwardBackward) else 0
    return worker.submit(Task(command, queue_key=command.adapter_id, cost=cost)).done.result(60)


def _twins(engine: Engine) -> None:
    for adapter in ("whole", "split"):
        engine.create_adapter(adapter, LoraSpec(rank=4, seed=7))
        randomize_adapter(engine, adapter, seed=3)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = max(1.0, float(a.abs().max()))
    assert float((a - b).abs().max()) <= TOL * scale


def _same_outputs(a: TrainOutput, b: TrainOutput) -> None:
    assert a.metrics.keys() == b.metrics.keys()
    for key in a.metrics:
        assert abs(a.metrics[key] - b.metrics[key]) <= TOL * max(1.0, abs(a.metrics[key]))
    assert len(a.loss_fn_outputs) == len(b.loss_fn_outputs)
    for x, y in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
        _close(torch.from_numpy(np.asarray(x["logprobs"])), torch.from_numpy(np.asarray(y["logprobs"])))


@pytest.mark.parametrize(
    ("loss_fn", "keys"),
    [
        ("cross_entropy", ("weights",)),
        ("importance_sampling", ("logprobs", "advantages")),
        ("gspo", ("logprobs", "advantages")),
    ],
)
def test_split_equals_whole(engine: Engine, worker: Worker, loss_fn: str, keys: tuple[str, ...]) -> None:
    _twins(engine)
    data = random_datums(7, seed=31, lengths=(4, 14), keys=keys)
    assert sum(len(d.tokens) for d in data) > 2 * BUDGET
    earlier = random_datums(2, seed=32, keys=keys)  # gradient already accumulated
    for adapter in ("whole", "split"):
        engine.forward_backward(adapter, earlier, loss_fn, None, backward=True)

    whole = engine.forward_backward("whole", data, loss_fn, None, backward=True)
    split = _submit(worker, ForwardBackward("split", data, loss_fn))
    assert isinstance(split, TrainOutput)
    _same_outputs(split, whole)
    grads_whole, grads_split = adapter_grads(engine, "whole"), adapter_grads(engine, "split")
    for key, grad in grads_whole.items():
        _close(grads_split[key], grad)

    engine.optim_step("whole", ADAM)
    _submit(worker, OptimStep("split", ADAM))
    weights_whole, weights_split = adapter_tensors(engine, "whole"), adapter_tensors(engine, "split")
    for key, weight in weights_whole.items():
        _close(weights_split[key], weight)
    after = engine.forward_backward("whole", data, loss_fn, None, backward=False)
    split_after = _submit(worker, ForwardBackward("split", data, loss_fn, backward=False))
    assert isinstance(split_after, TrainOutput)
    _same_outputs(split_after, after)


def test_a_failing_part_restores_the_gradients(engine: Engine, worker: Worker) -> None:
    _twins(engine)
    engine.forward_backward("split", random_datums(2, seed=41), "cross_entropy", None, backward=True)
    before = adapter_grads(engine, "split")
    data: list[TrainDatum] = random_datums(7, seed=42, lengths=(4, 14))
    data[-1].tokens[0] = engine.info.vocab_size  # out of the vocabulary: the last part fails
    with pytest.raises(UserInputError):
        _submit(worker, ForwardBackward("split", data, "cross_entropy"))
    after = adapter_grads(engine, "split")
    for key, grad in before.items():
        assert torch.equal(after[key], grad)  # exactly as before the first part
    assert engine._grad_checkpoints == {}

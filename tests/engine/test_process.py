"""The engine in a worker process, through its handle: the same typed commands and
results as in-process, token streaming back across the boundary, and a dead worker."""

from __future__ import annotations

import os
import pathlib
import signal
import time
from typing import Any

import numpy as np
import pytest

from tinker_server.engine import (
    TINY_MODEL,
    AdamConfig,
    AdapterNotFound,
    LoraSpec,
    SampleJob,
    SampleOutput,
    TrainOutput,
    UserInputError,
)
from tinker_server.engine.api import (
    CopyAdapter,
    CreateAdapter,
    DropAdapter,
    ForwardBackward,
    LoadAdapter,
    OptimStep,
    Sample,
    SaveAdapter,
    WorkerLost,
)
from tinker_server.engine.host import LocalEngine
from tinker_server.engine.process import ProcessEngine, WorkerSpec
from tinker_server.engine.residency import ResidencyLimits
from tinker_server.engine.worker import load_host

from .conftest import random_datums

SPEC: dict[str, Any] = dict(
    model_name=TINY_MODEL, torch_threads=1, residency=ResidencyLimits(max_samplers=2, snapshots_per_source=1)
)


@pytest.fixture
def worker(home: pathlib.Path):
    handle = ProcessEngine(WorkerSpec(home=str(home), **SPEC))
    yield handle
    handle.close()


def _round(handle, *commands):
    report = handle.run(list(commands))
    assert len(report.outcomes) == len(commands)
    return report


def _script(home: pathlib.Path) -> list:
    data = random_datums(3, seed=4)
    job = SampleJob("run", [1, 2, 3], num_samples=2, max_tokens=5, temperature=1.0, seed=7, topk_sample_logprobs=2)
    return [
        [CreateAdapter("run", LoraSpec(rank=4, seed=3))],
        [
            ForwardBackward("run", data, "cross_entropy", None, True),
            ForwardBackward("run", data, "cross_entropy", None, False),
        ],
        [OptimStep("run", AdamConfig(learning_rate=1e-2))],
        [Sample(job), Sample(SampleJob(None, [5, 6], max_tokens=3, temperature=0.0))],
        [SaveAdapter("run", home / "ckpt-process-test", True)],
        [LoadAdapter("copy", home / "ckpt-process-test", True)],
        [ForwardBackward("copy", data, "cross_entropy", None, False)],
    ]


def test_worker_process_matches_the_engine_in_process(worker: ProcessEngine, home: pathlib.Path) -> None:
    local = LocalEngine(lambda: load_host(WorkerSpec(home=str(home), **SPEC)).core)
    assert worker.start() == local.start()
    for commands in _script(home):
        remote, here = worker.run(commands), local.run(commands)
        for a, b in zip(remote.outcomes, here.outcomes, strict=True):
            assert type(a) is type(b)
            if isinstance(a, TrainOutput) and isinstance(b, TrainOutput):
                assert a.metrics == pytest.approx(b.metrics, rel=1e-6)
                for x, y in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
                    np.testing.assert_allclose(x["logprobs"], y["logprobs"], rtol=1e-6)
            elif isinstance(a, SampleOutput) and isinstance(b, SampleOutput):
                assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
                np.testing.assert_allclose(
                    [s.logprobs for s in a.sequences], [s.logprobs for s in b.sequences], rtol=1e-5
                )
            elif isinstance(a, dict):
                assert a == pytest.approx(b, rel=1e-6)
            elif isinstance(a, int):  # bytes written
                assert a > 0
            else:
                assert a == b
    assert worker.resident() == 2


def test_errors_come_back_as_outcomes_and_the_worker_goes_on(worker: ProcessEngine) -> None:
    report = _round(
        worker,
        CreateAdapter("a", LoraSpec(rank=2)),
        CreateAdapter("a", LoraSpec(rank=2)),
        OptimStep("missing", AdamConfig()),
        DropAdapter("missing", missing_ok=False),
    )
    assert report.outcomes[0] is None
    assert isinstance(report.outcomes[1], UserInputError) and "already exists" in str(report.outcomes[1])
    assert isinstance(report.outcomes[2], AdapterNotFound) and report.outcomes[2].adapter_id == "missing"
    assert isinstance(report.outcomes[3], AdapterNotFound)
    bad = SampleJob("a", [1, 99999], max_tokens=2)
    assert isinstance(_round(worker, Sample(bad)).outcomes[0], UserInputError)
    assert _round(worker, Sample(SampleJob("a", [1, 2], max_tokens=2))).outcomes[0].sequences


def test_tokens_stream_back_while_the_batch_decodes(worker: ProcessEngine) -> None:
    events: list = []
    job = SampleJob(None, [1, 2, 3], num_samples=2, max_tokens=6, temperature=1.0, seed=1, on_token=events.append)
    output = _round(worker, Sample(job)).outcomes[0]
    for sample, seq in enumerate(output.sequences):
        mine = [e for e in events if e.sample == sample]
        assert [e.token for e in mine] == seq.tokens
        assert [e.position for e in mine] == list(range(len(seq.tokens)))
        assert mine[-1].stop_reason == seq.stop_reason


def test_snapshots_and_samplers_are_evicted_by_the_engine(worker: ProcessEngine, home: pathlib.Path) -> None:
    _round(worker, CreateAdapter("run", LoraSpec(rank=2, seed=1)))
    first = _round(worker, CopyAdapter("run", "snap1"))
    assert first.events == []
    second = _round(worker, CopyAdapter("run", "snap2"))  # one snapshot per run is kept
    assert [e.adapter_id for e in second.events] == ["snap1"] and "newer sampler" in second.events[0].reason
    _round(worker, SaveAdapter("run", home / "ckpt-evict", False))
    # Samplers loaded on demand count against max_samplers (2): the least recently used goes.
    for name in ("c1", "c2"):
        report = _round(worker, Sample(SampleJob(name, [1], max_tokens=1), reload_from=home / "ckpt-evict"))
        assert report.outcomes[0].sequences
    assert [e.adapter_id for e in report.events] == ["snap2"]
    assert worker.resident() == 3  # the run (pinned) and two samplers


def test_a_killed_worker_is_reported_and_replaced(worker: ProcessEngine) -> None:
    worker.start()
    _round(worker, CreateAdapter("a", LoraSpec(rank=2)))
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(WorkerLost, match=r"stopped \(killed by signal 9\).*adapters it held are gone"):
        worker.run([OptimStep("a", AdamConfig())])
    assert time.monotonic() - started < 5
    # The next round runs on a fresh worker, which holds no adapters.
    outcome = _round(worker, OptimStep("a", AdamConfig())).outcomes[0]
    assert isinstance(outcome, AdapterNotFound)
    assert worker.pid != pid and worker.starts == 2


def test_a_model_that_cannot_load_is_a_clear_error(home: pathlib.Path) -> None:
    from tinker_server.engine import ModelLoadError

    handle = ProcessEngine(WorkerSpec(model_name=str(home / "no-such-model"), home=str(home)))
    try:
        with pytest.raises(ModelLoadError, match="no-such-model"):
            handle.start()
    finally:
        handle.close()

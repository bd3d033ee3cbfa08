"""Killing the engine's worker process mid-step, through our SDK against the real server:
the future in flight fails within seconds with a sentence saying why, the server starts a
new worker, the run resumes from its last saved state, and nothing recorded is lost."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import tinker

from .conftest import TINY_MODEL, adam, datum, serve


def _wait_for_worker(runtime: object, timeout: float = 60.0) -> int:
    worker = runtime.scheduler.worker(TINY_MODEL)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while worker.handle is None or worker.handle.pid is None:
        assert time.monotonic() < deadline, "the engine worker did not start"
        time.sleep(0.05)
    return int(worker.handle.pid)


def test_killing_the_worker_mid_step_fails_the_step_and_the_run_resumes(tmp_path: Path) -> None:
    with serve(tmp_path / "home") as server:
        sc = tinker.ServiceClient(base_url=server.url, api_key="crash-test")
        try:
            tc = sc.create_lora_training_client(TINY_MODEL, rank=4, seed=0)
            data = [datum([1, 2, 3, 4, 5, 6]), datum([7, 8, 9, 10])]
            for _ in range(2):
                tc.forward_backward(data, "cross_entropy").result()
                tc.optim_step(adam(1e-2)).result()
            saved = tc.save_state("before-crash").result().path
            loss_at_save = tc.forward(data, "cross_entropy").result().metrics["loss:sum"]

            pid = _wait_for_worker(server.app.state.runtime)
            # A step big enough to be running when the worker is killed.
            big = [datum(list(range(1, 400))) for _ in range(64)]
            in_flight = tc.forward_backward(big, "cross_entropy")
            time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            with pytest.raises(tinker.TinkerError, match="engine worker of tinker-test/tiny-llama stopped"):
                in_flight.result(timeout=60)
            assert time.monotonic() - killed_at < 15

            # The run's adapter went with the worker: later calls say so and how to resume.
            with pytest.raises(tinker.TinkerError, match="create_training_client_from_state"):
                tc.forward(data, "cross_entropy").result(timeout=60)

            # Resume from the last saved state on the new worker: same weights, training goes on.
            resumed = sc.create_training_client_from_state(saved)
            assert resumed.forward(data, "cross_entropy").result().metrics["loss:sum"] == pytest.approx(
                loss_at_save, rel=1e-5
            )
            resumed.forward_backward(data, "cross_entropy").result()
            resumed.optim_step(adam(1e-2)).result()
            assert _wait_for_worker(server.app.state.runtime) != pid

            # Nothing recorded was lost.
            rest = sc.create_rest_client()
            runs = {r.training_run_id for r in rest.list_training_runs().result().training_runs}
            assert {tc.model_id, resumed.model_id} <= runs
            assert tc.model_id is not None
            paths = [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints]
            assert saved in paths
        finally:
            sc.holder.close()

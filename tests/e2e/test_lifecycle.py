"""Issue 3: session expiry and restart persistence, each on its own server and TINKER_HOME."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import tinker
from tinker._timings import Timings
from tinker.types._base import to_wire

from .conftest import TINY_MODEL, adam, serve, token_batch

DATA = token_batch()
PROMPT = tinker.ModelInput.from_ints([5, 17, 42])
GREEDY = tinker.SamplingParams(max_tokens=4, temperature=0.0)


@contextlib.contextmanager
def heartbeats(url: str, key: str, session_id: str, every: float = 0.2) -> Iterator[None]:
    """Keep a session alive by hand (raw requests) while the block runs, then fall silent."""
    stop = threading.Event()

    def beat() -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=5) as client:
            while not stop.is_set():
                client.post("/api/v1/session_heartbeat", json={"session_id": session_id}).raise_for_status()
                stop.wait(every)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _wait_for_gone(call: Callable[[], object], timeout: float) -> tinker.APIStatusError:
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
        except tinker.APIStatusError as err:
            if err.status_code == 410:
                return err
            raise
        if time.monotonic() > deadline:
            raise AssertionError(f"no 410 within {timeout} s")
        time.sleep(0.2)


def test_session_without_heartbeat_expires(
    tmp_path: Path, connect: Callable[..., tinker.ServiceClient], quiet_heartbeat: Timings
) -> None:
    with serve(tmp_path / "home", session_timeout_s=6.0, sweep_interval_s=0.1) as srv:
        # A client that heartbeats often enough survives (and loads the engine).
        busy = Timings(heartbeat_interval=0.2, telemetry_flush_interval=3600.0)
        warm = connect(url=srv.url, key="e2e-expiry-warmup", _timings=busy).create_lora_training_client(
            base_model=TINY_MODEL, rank=2
        )
        warm.forward_backward(DATA, "cross_entropy").result(timeout=60)

        silent = connect(url=srv.url, key="e2e-expiry", _timings=quiet_heartbeat)
        with heartbeats(srv.url, "e2e-expiry", silent.holder.session_id):  # until the setup is done
            tc = silent.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=1)
            tc.forward_backward(DATA, "cross_entropy")
            tc.optim_step(adam()).result(timeout=30)
            state = tc.save_state("before-expiry").result(timeout=30).path
            sampler_path = tc.save_weights_for_sampler("w").result(timeout=30).path
            sampler = tc.save_weights_and_get_sampling_client()
            expected = sampler.sample(PROMPT, 1, GREEDY).result(timeout=30).sequences[0].tokens

        started = time.monotonic()
        err = _wait_for_gone(lambda: tc.forward(DATA, "cross_entropy").result(timeout=30), timeout=30)
        assert time.monotonic() - started < 15
        assert "expired" in str(err) and "create_training_client_from_state" in str(err)
        for call in (
            lambda: tc.forward_backward(DATA, "cross_entropy").result(timeout=10),
            lambda: tc.optim_step(adam()).result(timeout=10),
            lambda: tc.save_state("after").result(timeout=10),
            lambda: sampler.sample(PROMPT, 1, GREEDY).result(timeout=10),
        ):
            start = time.monotonic()
            with pytest.raises(tinker.APIStatusError) as info:
                call()
            assert info.value.status_code == 410 and "expired" in str(info.value)
            assert time.monotonic() - start < 10

        # Runs and checkpoints stay listed; the run resumes from its checkpoint in a live session.
        rest = connect(url=srv.url, key="e2e-expiry").create_rest_client()
        run_id = str(tc.model_id)
        assert {c.tinker_path for c in rest.list_checkpoints(run_id).result(timeout=30).checkpoints} == {
            state,
            sampler_path,
        }
        last = rest.get_training_run(run_id).result(timeout=30).last_checkpoint
        assert last is not None and last.tinker_path == state
        assert silent.holder.session_id in rest.list_sessions().result(timeout=30).sessions
        live = connect(url=srv.url, key="e2e-expiry", _timings=busy)
        resumed = live.create_training_client_from_state_with_optimizer(state)
        assert resumed.forward_backward(DATA, "cross_entropy").result(timeout=30).metrics["loss:sum"] > 0
        again = live.create_sampling_client(model_path=sampler_path).sample(PROMPT, 1, GREEDY).result(timeout=30)
        assert again.sequences[0].tokens == expected
        # The warm-up client, heartbeating every 0.2 s, is still alive.
        assert warm.forward(DATA, "cross_entropy").result(timeout=30).metrics["loss:sum"] > 0


def test_restart_keeps_runs_checkpoints_and_sessions(
    tmp_path: Path, connect: Callable[..., tinker.ServiceClient]
) -> None:
    home = tmp_path / "home"
    key = "e2e-restart"
    with serve(home) as srv:
        sc = connect(url=srv.url, key=key)
        tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=4, user_metadata={"k": "v"})
        tc.forward_backward(DATA, "cross_entropy")
        tc.optim_step(adam()).result(timeout=30)
        state = tc.save_state("s").result(timeout=30).path
        weights = tc.save_weights_for_sampler("w").result(timeout=30).path
        sampler = tc.save_weights_and_get_sampling_client()
        expected = [
            o["logprobs"].to_numpy() for o in tc.forward(DATA, "cross_entropy").result(timeout=30).loss_fn_outputs
        ]
        before_rest = sc.create_rest_client()
        runs_before = before_rest.list_training_runs().result(timeout=30)
        ckpts_before = before_rest.list_user_checkpoints().result(timeout=30)
        session_before = before_rest.get_session(sc.holder.session_id).result(timeout=30)
        sc.create_rest_client().publish_checkpoint_from_tinker_path(weights).result(timeout=30)
        sc.holder.close()

    with serve(home) as srv:
        sc2 = connect(url=srv.url, key=key)
        rest = sc2.create_rest_client()
        runs = rest.list_training_runs().result(timeout=30)
        assert [r.training_run_id for r in runs.training_runs] == [tc.model_id]
        run = rest.get_training_run(str(tc.model_id)).result(timeout=30)
        assert run.user_metadata == {"k": "v"} and run.lora_rank == 4
        assert run.last_checkpoint == runs_before.training_runs[0].last_checkpoint
        ckpts = rest.list_user_checkpoints().result(timeout=30)
        assert [c.tinker_path for c in ckpts.checkpoints] == [c.tinker_path for c in ckpts_before.checkpoints]
        assert {c.tinker_path: c.public for c in ckpts.checkpoints} == {state: False, weights: True}
        assert rest.list_sessions().result(timeout=30).sessions == [sc2.holder.session_id, sc.holder.session_id]
        assert rest.get_session(sc.holder.session_id).result(timeout=30) == session_before
        assert sampler.sampling_session_id in session_before.sampler_ids
        assert rest.get_sampler(sampler.sampling_session_id).result(timeout=30).base_model == TINY_MODEL
        url = rest.get_checkpoint_archive_url_from_tinker_path(state).result(timeout=30).url
        assert url.startswith(srv.url)

        # The old run's adapter is gone from memory; its checkpoints still resume exactly.
        body = {
            "model_id": tc.model_id,
            "seq_id": 1000,
            "forward_input": {"data": [to_wire(d) for d in DATA], "loss_fn": "cross_entropy"},
        }
        response = httpx.post(f"{srv.url}/api/v1/forward", json=body, headers={"X-API-Key": key}, timeout=10)
        assert response.status_code == 410, response.text
        assert "restarted" in response.text and "create_training_client_from_state" in response.text
        resumed = sc2.create_training_client_from_state(state)
        got = [
            o["logprobs"].to_numpy() for o in resumed.forward(DATA, "cross_entropy").result(timeout=30).loss_fn_outputs
        ]
        for x, y in zip(got, expected, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-6)
        assert (
            len(sc2.create_sampling_client(model_path=weights).sample(PROMPT, 2, GREEDY).result(timeout=30).sequences)
            == 2
        )

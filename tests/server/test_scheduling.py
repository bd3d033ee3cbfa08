"""Ordering, idempotent retries, batching and backpressure (fake engine)."""

from __future__ import annotations

import time
from collections.abc import Callable

from .conftest import FAKE_MODEL, Api, fb_body
from .fake_engine import FakeEngine


def _optim(model_id: str, seq: int, lr: float = 0.1) -> dict:
    return {"adam_params": {"learning_rate": lr}, "model_id": model_id, "seq_id": seq}


def test_pipelined_ops_run_in_seq_order_and_retries_apply_once(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    model_id = api.create_model(api.session())
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    try:
        r1 = api.ok("forward_backward", fb_body(model_id, 1))["request_id"]
        r2 = api.ok("optim_step", _optim(model_id, 2))["request_id"]
        # A client-side retry of the same seq_id (new idempotency key) gets the same future.
        assert api.ok("optim_step", _optim(model_id, 2))["request_id"] == r2
        assert api.ok("forward_backward", fb_body(model_id, 1))["request_id"] == r1
        r3 = api.ok("forward_backward", fb_body(model_id, 3))["request_id"]
        r4 = api.ok("optim_step", _optim(model_id, 4))["request_id"]
        assert len({r1, r2, r3, r4}) == 4
        # Not ready while the engine is held: 408 try-again.
        assert api.post("retrieve_future", {"request_id": r4}).status_code == 408
    finally:
        engine.gate.set()
    assert api.poll(r2)["metrics"]["step"] == 1.0
    assert api.poll(r4)["metrics"]["step"] == 2.0
    ops = [name for name, arg in engine.calls if arg == model_id and name != "create_adapter"]
    assert ops == ["forward_backward", "optim_step", "forward_backward", "optim_step"]
    # The result can be fetched again (retried poll).
    assert api.poll(r2)["metrics"]["step"] == 1.0
    # A retry of an accepted op gets its future; another op reusing that seq_id is refused.
    assert api.ok("forward_backward", fb_body(model_id, 3))["request_id"] == r3
    reused = api.post("optim_step", _optim(model_id, 3))
    assert reused.status_code == 400
    assert "already used by a forward_backward" in reused.json()["detail"]


def test_gap_from_rejected_submit_does_not_stall(api: Api) -> None:
    model_id = api.create_model(api.session())
    bad = fb_body(model_id, 1)
    bad["forward_backward_input"]["data"][0]["loss_fn_inputs"]["weights"]["data"] = [1, 1]
    bad["forward_backward_input"]["data"][0]["loss_fn_inputs"]["weights"]["shape"] = [2]
    assert api.post("forward_backward", bad).status_code == 400
    out = api.result("forward_backward", fb_body(model_id, 2))
    assert out["metrics"]["loss:sum"] == 6.0


def test_create_model_retry_is_idempotent(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    sid = api.session()
    body = {"session_id": sid, "model_seq_id": 0, "base_model": FAKE_MODEL, "user_metadata": None, "lora_config": None}
    first = api.ok("create_model", body)
    second = api.ok("create_model", body)
    assert first["request_id"] == second["request_id"]
    assert api.poll(first["request_id"])["model_id"] == f"{sid}:train:0"
    creates = [arg for name, arg in fake_engines[FAKE_MODEL].calls if name == "create_adapter"]
    assert creates == [f"{sid}:train:0"]
    info = api.ok("get_info", {"model_id": f"{sid}:train:0"})
    assert info["lora_rank"] == 32  # default rank when lora_config is null


def test_forward_heads_of_different_runs_are_batched(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    sid = api.session()
    a = api.create_model(sid, 0)
    b = api.create_model(sid, 1)
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    try:
        # Occupy the worker with a sample so both submits queue up behind it.
        blocker = api.ok(
            "create_sampling_session",
            {"session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE_MODEL, "model_path": None},
        )["sampling_session_id"]
        api.ok(
            "asample",
            {
                "num_samples": 1,
                "prompt": {"chunks": [{"tokens": [1]}]},
                "sampling_params": {"max_tokens": 1},
                "sampling_session_id": blocker,
                "seq_id": 0,
            },
        )
        time.sleep(0.2)
        ra = api.ok("forward_backward", fb_body(a, 1))["request_id"]
        rb = api.ok("forward_backward", fb_body(b, 1))["request_id"]
    finally:
        engine.gate.set()
    api.poll(ra)
    api.poll(rb)
    assert ("forward_backward_many", 2) in engine.calls


def test_backpressure_429(make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine]) -> None:
    api = make_fake_server(max_pending_samples=1, max_pending_requests=4)
    sid = api.session()
    model_id = api.create_model(sid)
    sampler = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE_MODEL, "model_path": None},
    )["sampling_session_id"]
    engine = fake_engines[FAKE_MODEL]
    body = {
        "num_samples": 1,
        "prompt": {"chunks": [{"tokens": [1]}]},
        "sampling_params": {"max_tokens": 1},
        "sampling_session_id": sampler,
        "seq_id": 0,
    }
    engine.gate.clear()
    try:
        first = api.post("asample", body, headers={"X-Tinker-Sampling-Backpressure": "1"})
        assert first.status_code == 200
        time.sleep(0.2)  # the worker takes the first one and blocks in the engine
        second = api.post("asample", body, headers={"X-Tinker-Sampling-Backpressure": "1"})
        assert second.status_code == 200
        third = api.post("asample", body, headers={"X-Tinker-Sampling-Backpressure": "1"})
        assert third.status_code == 429
        assert third.headers["retry-after"] == "1"
        # Without the header the server queues a little more before refusing.
        assert api.post("asample", body).status_code == 200
        for seq in (1, 2):
            assert api.post("forward_backward", fb_body(model_id, seq)).status_code == 200
        assert api.post("forward_backward", fb_body(model_id, 3)).status_code == 429
    finally:
        engine.gate.set()
    # After the 429 the same seq_id can be submitted again (it was never registered),
    # once the queue drains; like the client, retry until accepted.
    deadline = time.monotonic() + 10
    while (status := api.post("forward_backward", fb_body(model_id, 3)).status_code) == 429:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status == 200


def _sampler(api: Api) -> tuple[str, str]:
    sid = api.session()
    sampler = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE_MODEL, "model_path": None},
    )["sampling_session_id"]
    return sid, sampler


def _sample_body(sampler: str, seq: int) -> dict:
    return {
        "num_samples": 1,
        "prompt": {"chunks": [{"tokens": [1, 2]}]},
        "sampling_params": {"max_tokens": 2},
        "sampling_session_id": sampler,
        "seq_id": seq,
    }


def test_sampling_requests_sent_one_by_one_decode_in_one_batch(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine], monkeypatch
) -> None:
    """An RL loop sends one request per prompt; they must not decode one by one."""
    from tinker_server import scheduler

    monkeypatch.setattr(scheduler, "SAMPLE_ARRIVAL_GAP_S", 1.0)  # generous, for a slow machine
    api = make_fake_server(sample_batch_window_s=1.0)
    _, sampler = _sampler(api)
    ids = [api.ok("asample", _sample_body(sampler, seq))["request_id"] for seq in range(5)]
    for request_id in ids:
        assert len(api.poll(request_id)["sequences"]) == 1
    assert [n for name, n in fake_engines[FAKE_MODEL].calls if name == "sample"] == [5]


def test_queued_training_work_cuts_the_sampling_wait_short(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine], monkeypatch
) -> None:
    from tinker_server import scheduler

    monkeypatch.setattr(scheduler, "SAMPLE_ARRIVAL_GAP_S", 30.0)
    api = make_fake_server(sample_batch_window_s=1.0)
    sid, sampler = _sampler(api)
    model_id = api.create_model(sid)
    start = time.monotonic()
    sample_id = api.ok("asample", _sample_body(sampler, 0))["request_id"]
    api.result("forward_backward", fb_body(model_id, 1))
    api.poll(sample_id)
    assert time.monotonic() - start < 0.9  # the 1 s window was not waited out


def test_a_zero_window_never_waits(make_fake_server: Callable[..., Api], monkeypatch) -> None:
    from tinker_server import scheduler

    monkeypatch.setattr(scheduler, "SAMPLE_ARRIVAL_GAP_S", 30.0)
    api = make_fake_server(sample_batch_window_s=0.0)
    _, sampler = _sampler(api)
    start = time.monotonic()
    api.poll(api.ok("asample", _sample_body(sampler, 0))["request_id"])
    assert time.monotonic() - start < 10.0  # neither the 30 s gap nor any window applies


def test_one_at_a_time_callers_stop_waiting_until_callers_are_concurrent_again(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine], monkeypatch
) -> None:
    from tinker_server import scheduler

    monkeypatch.setattr(scheduler, "SAMPLE_ARRIVAL_GAP_S", 0.5)
    api = make_fake_server(sample_batch_window_s=0.5)
    _, sampler = _sampler(api)

    def engine_calls() -> list[int]:
        return [n for name, n in fake_engines[FAKE_MODEL].calls if name == "sample"]

    def one(seq: int) -> float:
        start = time.monotonic()
        api.poll(api.ok("asample", _sample_body(sampler, seq))["request_id"])
        return time.monotonic() - start

    lone = [one(seq) for seq in range(scheduler.LONE_WAITS_LIMIT)]
    assert min(lone) >= 0.5  # each waited out the gap: nobody joined
    assert max(one(seq) for seq in range(10, 13)) < 0.45  # then lone requests start at once
    # Concurrent callers again: requests queue behind a running one and go as a batch of 4...
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    try:
        first = api.ok("asample", _sample_body(sampler, 20))["request_id"]
        time.sleep(0.2)  # the worker takes it at once and blocks in the engine
        queued = [api.ok("asample", _sample_body(sampler, seq))["request_id"] for seq in range(21, 25)]
    finally:
        engine.gate.set()
    for request_id in [first, *queued]:
        api.poll(request_id)
    # ...after which requests sent one by one are gathered into one batch again.
    burst = [api.ok("asample", _sample_body(sampler, seq))["request_id"] for seq in range(30, 35)]
    for request_id in burst:
        api.poll(request_id)
    assert engine_calls()[-3:] == [1, 4, 5]

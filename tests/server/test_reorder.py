"""Submits that arrive ahead of their seq_id's turn (0.20+ clients send chunks concurrently)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tinker_server.reorder import ReorderFull, SeqReorder

from .conftest import FAKE_MODEL, Api, datum, fb_body
from .fake_engine import FakeEngine


def _optim(model_id: str, seq: int) -> dict:
    return {"adam_params": {"learning_rate": 0.1}, "model_id": model_id, "seq_id": seq, "type": "optim_step"}


def _ops(engine: FakeEngine, model_id: str) -> list[str]:
    return [name for name, arg in engine.calls if arg == model_id and name != "create_adapter"]


def test_policy_releases_in_order_and_expires_gaps() -> None:
    held: SeqReorder[str] = SeqReorder(max_held=2, gap_timeout_s=10)
    held.hold("r", 3, "c", now=0.0)
    held.hold("r", 2, "b", now=1.0)
    with pytest.raises(ReorderFull):
        held.hold("r", 4, "d", now=1.0)
    assert held.release("r", 0) == (0, [])  # 1 has not come
    assert held.release("r", 1) == (3, ["b", "c"])  # 1 went straight through; 2 and 3 follow
    held.hold("r", 6, "f", now=5.0)
    assert held.expire(now=14.0) == []
    [(run, entries)] = held.expire(now=15.0)
    assert run == "r" and [e.seq_id for e in entries] == [6]
    assert not held.has_items("r")


def test_chunks_sent_out_of_order_run_in_seq_order(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    model_id = api.create_model(api.session())
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    try:
        r4 = api.ok("optim_step", _optim(model_id, 4))["request_id"]
        r3 = api.ok("forward_backward", fb_body(model_id, 3))["request_id"]
        r2 = api.ok("optim_step", _optim(model_id, 2))["request_id"]
        # A retry of a held submit gets the same future.
        assert api.ok("optim_step", _optim(model_id, 4))["request_id"] == r4
        r1 = api.ok("forward_backward", fb_body(model_id, 1))["request_id"]
    finally:
        engine.gate.set()
    assert api.poll(r2)["metrics"]["step"] == 1.0
    assert api.poll(r4)["metrics"]["step"] == 2.0
    assert "error" not in api.poll(r1) and "error" not in api.poll(r3)
    assert _ops(engine, model_id) == ["forward_backward", "optim_step", "forward_backward", "optim_step"]


def test_a_gap_that_never_fills_fails_the_held_requests(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    model_id = api.create_model(api.session())
    r3 = api.ok("forward_backward", fb_body(model_id, 3))["request_id"]
    assert api.post("retrieve_future", {"request_id": r3}).status_code == 408  # held, not lost
    runtime = api.runtime
    assert runtime.training.fail_stalled(now=time.monotonic() + 3600) == 1
    failed = api.poll(r3)
    assert failed["category"] == "user"
    assert "seq_id 1, 2" in failed["error"] and "never arrived" in failed["error"]
    # The run goes on after the abandoned ids; the missing ones are now too late.
    assert api.result("optim_step", _optim(model_id, 4))["metrics"]["step"] == 1.0
    assert api.post("forward_backward", fb_body(model_id, 1)).status_code == 400
    assert _ops(fake_engines[FAKE_MODEL], model_id) == ["optim_step"]


def test_held_requests_are_bounded(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server(max_held_requests=2)
    model_id = api.create_model(api.session())
    api.ok("forward_backward", fb_body(model_id, 2))
    api.ok("forward_backward", fb_body(model_id, 3))
    over = api.post("forward_backward", fb_body(model_id, 4))
    assert over.status_code == 429 and "waiting for an earlier seq_id" in over.json()["detail"]
    # The client retries later with the same seq_id; once 1 comes everything drains.
    api.result("forward_backward", fb_body(model_id, 1))
    assert "error" not in api.result("forward_backward", fb_body(model_id, 4))


def test_a_rejected_seq_id_does_not_hold_back_later_ones(api: Api) -> None:
    model_id = api.create_model(api.session())
    r2 = api.ok("forward_backward", fb_body(model_id, 2))["request_id"]
    rejected = api.post("forward_backward", fb_body(model_id, 1, data=[datum([1], targets=[1], weights=[1.0, 1.0])]))
    assert rejected.status_code == 400, rejected.text
    assert api.poll(r2)["metrics"]["loss:sum"] == 6.0

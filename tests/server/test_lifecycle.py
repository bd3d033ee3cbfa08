"""Session expiry and restart persistence (fake engine, real SQLite)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from .conftest import FAKE_MODEL, Api, fb_body
from .fake_engine import FakeEngine


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _sample(api: Api, sampler: str) -> httpx.Response:
    body = {
        "num_samples": 1,
        "prompt": {"chunks": [{"tokens": [1, 2]}]},
        "sampling_params": {"max_tokens": 2},
        "sampling_session_id": sampler,
        "seq_id": 0,
    }
    return api.post("asample", body)


def test_session_expiry_drops_adapters(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine]
) -> None:
    api = make_fake_server(session_timeout_s=0.5, sweep_interval_s=3600)
    runtime = api.runtime
    sid, live_sid = api.session(), api.session()
    model_id = api.create_model(sid)
    live_model = api.create_model(live_sid)
    path = api.result("save_weights", {"model_id": model_id, "path": "w", "seq_id": 1})["path"]
    eph = api.result("save_weights_for_sampler", {"model_id": model_id, "sampling_session_seq_id": 0, "seq_id": 2})
    named = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 1, "base_model": None, "model_path": path},
    )["sampling_session_id"]
    engine = fake_engines[FAKE_MODEL]
    assert "error" not in api.poll(_sample(api, named).json()["request_id"])  # loads its adapter
    assert {model_id, eph["sampling_session_id"], named} <= set(engine.adapters)

    time.sleep(0.6)
    api.ok("session_heartbeat", {"session_id": live_sid})
    runtime.sweep_once()
    _wait_until(lambda: not ({model_id, eph["sampling_session_id"], named} & set(engine.adapters)))
    assert live_model in engine.adapters

    response = api.post("forward_backward", fb_body(model_id, 3))
    assert response.status_code == 410
    detail = response.json()["detail"]
    assert "session expired" in detail and "create_training_client_from_state" in detail
    assert _sample(api, eph["sampling_session_id"]).status_code == 410
    # A sampler made from a checkpoint is reloaded on demand.
    fut = _sample(api, named).json()
    assert "error" not in api.poll(fut["request_id"])
    # Runs and checkpoints stay listed; other sessions are untouched.
    assert api.get(f"training_runs/{model_id}").status_code == 200
    assert api.get(f"training_runs/{model_id}/checkpoints").json()["checkpoints"][0]["tinker_path"] == path
    assert api.result("forward_backward", fb_body(live_model, 1))["metrics"]
    # A heartbeat revives the session itself; it can create new runs and resume from the checkpoint.
    api.ok("session_heartbeat", {"session_id": sid})
    resumed = api.create_model(sid, 1)
    api.result("load_weights", {"model_id": resumed, "path": path, "optimizer": True, "seq_id": 1})


def test_sweeper_runs_in_background(make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine]) -> None:
    api = make_fake_server(session_timeout_s=0.2, sweep_interval_s=0.05)
    model_id = api.create_model(api.session())
    _wait_until(lambda: model_id not in fake_engines[FAKE_MODEL].adapters)


def test_restart_persistence(make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine]) -> None:
    api = make_fake_server()
    sid = api.session()
    model_id = api.create_model(sid)
    path = api.result("save_weights", {"model_id": model_id, "path": "w", "seq_id": 1})["path"]
    sampler_path = api.result("save_weights_for_sampler", {"model_id": model_id, "path": "s", "seq_id": 2})["path"]
    named = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 0, "base_model": None, "model_path": sampler_path},
    )["sampling_session_id"]
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    running = api.ok("forward_backward", fb_body(model_id, 3))["request_id"]
    time.sleep(0.2)  # the worker is now inside the engine with seq 3
    queued = api.ok("forward_backward", fb_body(model_id, 4))["request_id"]
    threading.Timer(0.3, engine.gate.set).start()
    api.close()  # stop the server

    fake_engines.clear()  # a new process: nothing in engine memory
    api2 = make_fake_server()
    assert api2.get("sessions").json() == {"sessions": [sid]}
    assert [r["training_run_id"] for r in api2.get("training_runs").json()["training_runs"]] == [model_id]
    assert [c["tinker_path"] for c in api2.get("checkpoints").json()["checkpoints"]] == [sampler_path, path]
    assert "error" not in api2.poll(running)
    assert api2.poll(queued) == {
        "error": "the server restarted before this request finished; submit it again",
        "category": "server",
    }
    response = api2.post("forward_backward", fb_body(model_id, 5))
    assert response.status_code == 410 and "server restarted" in response.json()["detail"]
    # Checkpoint samplers come back on demand; new runs resume from checkpoints.
    assert "error" not in api2.poll(_sample(api2, named).json()["request_id"])
    api2.ok("session_heartbeat", {"session_id": sid})
    resumed = api2.create_model(sid, 1)
    api2.result("load_weights", {"model_id": resumed, "path": path, "optimizer": True, "seq_id": 1})
    assert api2.result("forward_backward", fb_body(resumed, 2))["metrics"]

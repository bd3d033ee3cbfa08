"""Quotas, fair share and per-tenant backpressure through HTTP, with the fake engine and two keys.

A tenant's quota is given by replacing the services' tenant directory (``Context.tenants``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tinker_server.admission import Admission
from tinker_server.auth import owner_for_key
from tinker_server.tenants import UNLIMITED, Quota

from .conftest import FAKE_MODEL, FAKE_MODEL_B, KEY, OTHER_KEY, Api, datum, fb_body
from .fake_engine import FakeEngine


class Tenants:
    """A fixed directory: key -> quota; other keys unlimited."""

    def __init__(self, quotas: dict[str, Quota]) -> None:
        self._quotas = {owner_for_key(key): quota for key, quota in quotas.items()}

    def quota(self, owner: str) -> Quota:
        return self._quotas.get(owner, UNLIMITED)


def give_quotas(api: Api, quotas: dict[str, Quota]) -> None:
    api.runtime.training._ctx.tenants = Tenants(quotas)  # one Context, shared by every service


def _sampler(api: Api, base_model: str = FAKE_MODEL) -> str:
    sid = api.session()
    return api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 0, "base_model": base_model, "model_path": None},
    )["sampling_session_id"]


def _sample_body(sampler: str, first_token: int, seq: int = 0, max_tokens: int = 2, n: int = 1) -> dict[str, Any]:
    return {
        "num_samples": n,
        "prompt": {"chunks": [{"tokens": [first_token, 5]}]},
        "sampling_params": {"max_tokens": max_tokens},
        "sampling_session_id": sampler,
        "seq_id": seq,
    }


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- fair share ------------------------------------------------------------------------------


def test_a_sampling_flood_does_not_starve_another_tenants_request(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine]
) -> None:
    api = make_fake_server(max_sample_batch=8, sample_batch_window_s=0)
    a, b = api, api.as_key(OTHER_KEY)
    sampler_a, sampler_b = _sampler(a), _sampler(b)
    engine = fake_engines[FAKE_MODEL]
    rounds: list[list[int]] = []  # the first prompt token of each job, per engine round
    original = engine.sample

    def recording(jobs: list[Any]) -> list[Any]:
        rounds.append([job.prompt[0] for job in jobs])
        return original(jobs)

    engine.sample = recording  # type: ignore[method-assign]
    engine.gate.clear()
    try:
        first = a.ok("asample", _sample_body(sampler_a, 1, 0))
        _wait_for(lambda: len(rounds) == 1)  # the worker holds A's first request in the engine
        flood = [a.ok("asample", _sample_body(sampler_a, 1, seq))["request_id"] for seq in range(1, 101)]
        mine = b.ok("asample", _sample_body(sampler_b, 2))["request_id"]
    finally:
        engine.gate.set()
    assert "error" not in b.poll(mine)
    for request_id in [first["request_id"], *flood]:
        assert "error" not in a.poll(request_id)
    served_in = next(i for i, r in enumerate(rounds) if 2 in r)
    # Round 0 was A's first request; B is in the next round (FIFO would put it in round 13).
    assert served_in == 1, rounds[:3]
    assert sum(len(r) for r in rounds) == 102


def test_a_tenant_with_many_runs_gets_one_share_per_round(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine]
) -> None:
    api = make_fake_server()
    a, b = api, api.as_key(OTHER_KEY)
    sid_a = a.session()
    runs_a = [a.create_model(sid_a, seq) for seq in range(20)]
    held_run = a.create_model(sid_a, 20)
    run_b = b.create_model(b.session())
    engine = fake_engines[FAKE_MODEL]
    rounds: list[list[str]] = []
    original = engine.forward_backward_many

    def recording(items: list[tuple]) -> list[Any]:
        rounds.append([item[0] for item in items])
        return original(items)

    engine.forward_backward_many = recording  # type: ignore[method-assign]
    big = [datum([i % 60 + 1 for i in range(250)])]  # 250 tokens a request: a quantum (4096) holds 16
    engine.gate.clear()
    try:
        blocker = a.ok("forward_backward", fb_body(held_run, 1, big))["request_id"]
        _wait_for(lambda: any(call[0] == "forward_backward" for call in engine.calls))
        flood = [a.ok("forward_backward", fb_body(run, seq, big))["request_id"] for seq in (1, 2) for run in runs_a]
        mine = b.ok("forward_backward", fb_body(run_b, 1, big))["request_id"]
    finally:
        engine.gate.set()
    assert "error" not in b.poll(mine)
    for request_id in [blocker, *flood]:
        assert "error" not in a.poll(request_id)
    assert rounds[0] == [held_run]
    first = rounds[1]
    assert run_b in first  # served in the first round after the held one
    assert sum(1 for run in first if run != run_b) <= 17  # A: one quantum's worth, not 20 runs
    assert sum(len(r) for r in rounds) == 42  # every request ran once


# -- per-tenant backpressure -----------------------------------------------------------------


def test_one_tenant_filling_the_queue_leaves_room_for_another(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine]
) -> None:
    api = make_fake_server(max_pending_samples=4, sample_batch_window_s=0)
    a, b = api, api.as_key(OTHER_KEY)
    sampler_a, sampler_b = _sampler(a), _sampler(b)
    engine = fake_engines[FAKE_MODEL]
    strict = {"X-Tinker-Sampling-Backpressure": "1"}
    engine.gate.clear()
    try:
        a.ok("asample", _sample_body(sampler_a, 1, 0))
        _wait_for(lambda: ("sample", 1) in engine.calls)
        for seq in range(1, 5):
            assert a.post("asample", _sample_body(sampler_a, 1, seq), headers=strict).status_code == 200
        over = a.post("asample", _sample_body(sampler_a, 1, 5), headers=strict)
        assert over.status_code == 429 and over.headers["retry-after"] == "1"
        assert over.json()["detail"] == (
            "your requests fill your share of the sampling queue of fake/model-a (4 of 4, shared by 1 tenant(s)); "
            "retry shortly"
        )
        # The queue is full, but B has queued nothing: it gets its share.
        assert b.post("asample", _sample_body(sampler_b, 2, 0), headers=strict).status_code == 200
        assert b.post("asample", _sample_body(sampler_b, 2, 1), headers=strict).status_code == 200
        mine = b.post("asample", _sample_body(sampler_b, 2, 2), headers=strict)
        assert mine.status_code == 429
        assert (
            "your requests fill your share of the sampling queue of fake/model-a (2 of 4, shared by 2 tenant(s))"
            in (mine.json()["detail"])
        )
        again = a.post("asample", _sample_body(sampler_a, 1, 6), headers=strict)
        assert again.status_code == 429 and "your requests fill your share" in again.json()["detail"]
    finally:
        engine.gate.set()


# -- quotas that waiting does not clear ------------------------------------------------------


def _create(api: Api, sid: str, seq: int, base_model: str = FAKE_MODEL, rank: int = 8) -> Any:
    return api.post(
        "create_model",
        {
            "session_id": sid,
            "model_seq_id": seq,
            "base_model": base_model,
            "lora_config": {"rank": rank, "seed": None, "train_unembed": True, "train_mlp": True, "train_attn": True},
        },
    )


def test_over_quota_answers_are_403_sentences(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server()
    give_quotas(api, {KEY: Quota(max_training_runs=1, max_lora_rank=8, base_models=(FAKE_MODEL,))})
    sid = api.session()
    other = _create(api, sid, 0, base_model=FAKE_MODEL_B)
    assert other.status_code == 403
    assert other.json()["detail"] == (
        "this API key may not use base model 'fake/model-b'; its quota allows: fake/model-a"
    )
    wide = _create(api, sid, 1, rank=16)
    assert wide.status_code == 403
    assert wide.json()["detail"] == (
        "LoRA rank 16 is over this API key's limit of 8; create the model with rank 8 or lower"
    )
    run = api.create_model(sid, 2)
    second = _create(api, sid, 3)
    assert second.status_code == 403
    assert second.json()["detail"] == (
        "this API key already has 1 training run(s) loaded, its limit is 1; unload one "
        "(TrainingClient.unload_model, or end its session) before creating another"
    )
    # Sampling a base model outside the quota is refused when the sampler is made.
    refused = api.post(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE_MODEL_B, "model_path": None},
    )
    assert refused.status_code == 403 and "may not use base model 'fake/model-b'" in refused.json()["detail"]
    # Unloading the run frees its place.
    api.result("unload_model", {"model_id": run})
    assert api.create_model(sid, 4)
    # Another key is not limited.
    b = api.as_key(OTHER_KEY)
    assert b.create_model(b.session(), 0, base_model=FAKE_MODEL_B, rank=32)


def test_storage_quota_refuses_saves_and_uses_up_the_seq_id(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server()
    run = api.create_model(api.session())
    api.result("save_weights", {"model_id": run, "path": "first", "seq_id": 1})
    with api.runtime.db.session() as s:
        from tinker_server.training import stored_bytes

        used = stored_bytes(s, owner_for_key(KEY))
    assert used > 0
    give_quotas(api, {KEY: Quota(max_checkpoint_bytes=used)})
    for path, body in (
        ("save_weights", {"model_id": run, "path": "second", "seq_id": 2}),
        ("save_weights_for_sampler", {"model_id": run, "path": "s", "seq_id": 3}),
        ("save_weights_external", {"model_id": run, "path": "e", "seq_id": 4}),
    ):
        refused = api.post(path, body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["detail"] == (
            f"this API key's checkpoints take {used} bytes, its storage limit is {used} bytes; "
            "delete checkpoints (or give them a ttl) before saving more"
        )
    # The refused seq_ids are used up: the run goes on with the next one.
    api.result("forward_backward", fb_body(run, 5))
    # Deleting a checkpoint frees the room.
    assert api.delete(f"training_runs/{run}/checkpoints/weights/first").status_code == 200
    api.result("save_weights", {"model_id": run, "path": "third", "seq_id": 6})


# -- limits that clear with time: the clients wait ------------------------------------------


def test_queued_requests_quota_is_a_429_the_client_retries(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, FakeEngine]
) -> None:
    api = make_fake_server(sample_batch_window_s=0)
    give_quotas(api, {KEY: Quota(max_queued_requests=2)})
    sampler = _sampler(api)
    run = api.create_model(api.session(), 1)
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    try:
        api.ok("asample", _sample_body(sampler, 1, 0))
        api.ok("forward_backward", fb_body(run, 1))
        over = api.post("forward_backward", fb_body(run, 2))
        assert over.status_code == 429 and over.headers["retry-after"] == "1"
        assert over.json()["detail"] == (
            "this API key has 2 request(s) queued or running, its limit is 2; retry when some have finished"
        )
        assert api.post("asample", _sample_body(sampler, 1, 1)).status_code == 429
        # Another key is not affected.
        b = api.as_key(OTHER_KEY)
        assert b.post("asample", _sample_body(_sampler(b), 2, 0)).status_code == 200
    finally:
        engine.gate.set()
    # As the client does: retry the same seq_id after Retry-After.
    deadline = time.monotonic() + 10
    while (response := api.post("forward_backward", fb_body(run, 2))).status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(float(response.headers["retry-after"]) / 10)
    assert "error" not in api.poll(response.json()["request_id"])


def test_sampling_over_tokens_per_minute_is_a_429_that_clears_after_the_window(
    make_fake_server: Callable[..., Api],
) -> None:
    api = make_fake_server(sample_batch_window_s=0)
    give_quotas(api, {KEY: Quota(tokens_per_minute=10)})
    api.runtime.scheduler.admission = Admission(window_s=1.0)  # a one-second "minute"
    sampler = _sampler(api)
    first = api.ok("asample", _sample_body(sampler, 1, 0, max_tokens=4, n=3))  # 12 tokens
    assert "error" not in api.poll(first["request_id"])
    refused = api.post("asample", _sample_body(sampler, 1, 1), headers={"X-Tinker-Sampling-Backpressure": "1"})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["detail"].startswith(
        "this API key used 12 tokens in the last minute, its limit is 10 tokens per minute; retry in"
    )
    # Another key samples on.
    b = api.as_key(OTHER_KEY)
    assert "error" not in b.poll(b.ok("asample", _sample_body(_sampler(b), 2, 0))["request_id"])
    # As 0.5.1 and 0.38 do on a 429 to asample: wait, then submit again (the next seq_id).
    seq, deadline = 2, time.monotonic() + 10
    while (response := api.post("asample", _sample_body(sampler, 1, seq))).status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(0.2)
        seq += 1
    assert response.status_code == 200
    assert "error" not in api.poll(response.json()["request_id"])


def test_training_over_tokens_per_minute_waits_accepted_with_paused_rate_limit(
    make_fake_server: Callable[..., Api],
) -> None:
    api = make_fake_server()
    give_quotas(api, {KEY: Quota(tokens_per_minute=5)})
    api.runtime.scheduler.admission = Admission(window_s=1.5)
    run = api.create_model(api.session())
    six = [datum([1, 2, 3]), datum([4, 5, 6])]
    first = api.ok("forward_backward", fb_body(run, 1, six))
    second = api.ok("forward_backward", fb_body(run, 2, six))  # accepted, held for the window
    step = api.ok("optim_step", {"model_id": run, "adam_params": {"learning_rate": 0.1}, "seq_id": 3})
    polled = api.post("retrieve_future", {"request_id": second["request_id"]})
    assert polled.status_code == 408
    body = polled.json()
    assert body["type"] == "try_again" and body["queue_state"] == "paused_rate_limit"
    assert body["queue_state_reason"].startswith(
        "this API key's limit of 5 tokens per minute is reached; the request is accepted and starts in about"
    )
    started = time.monotonic()
    assert "error" not in api.poll(first["request_id"])
    # The client re-polls 408s at once (0.5.1 and 0.38 alike) until the result comes.
    deadline = time.monotonic() + 10
    while (polled := api.post("retrieve_future", {"request_id": second["request_id"]})).status_code == 408:
        assert polled.json()["queue_state"] in ("paused_rate_limit", "active")
        assert time.monotonic() < deadline
    assert "error" not in polled.json()
    assert time.monotonic() - started > 0.5  # it waited for the window
    assert "error" not in api.poll(step["request_id"])  # and the run kept its order

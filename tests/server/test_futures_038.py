"""Futures as 0.26+ clients use them: batched completion polling, cancelling, size-first
answers (fake engine; request bodies shaped as the 0.38 client sends them)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .conftest import FAKE_MODEL, Api
from .fake_engine import FakeEngine

CLONE = 10**9


def _sampler(api: Api) -> str:
    sid = api.session()
    body = {
        "session_id": sid,
        "sampling_session_seq_id": 0,
        "base_model": FAKE_MODEL,
        "type": "create_sampling_session",
    }
    return api.ok("create_sampling_session", body)["sampling_session_id"]


def _sample(api: Api, sampler: str, seq: int) -> str:
    body = {
        "num_samples": 1,
        "prompt": {"chunks": [{"tokens": [1, 2], "type": "encoded_text"}]},
        "sampling_params": {"max_tokens": 2, "temperature": 1.0, "top_k": -1, "top_p": 1.0},
        "sampling_session_id": sampler,
        "seq_id": seq,
        "prompt_logprobs": False,
        "type": "sample",
    }
    return api.ok("asample", body)["request_id"]


def _poll_all(api: Api, sampler: str, clone: int, cursor: int, timeout: float | None = None) -> dict:
    body: dict = {
        "target": {"type": "sampling_session", "sampling_session_id": sampler, "cloned_sampler_id": clone},
        "prev_cursor": cursor,
        "retrieved_request_ids": [],
    }
    if timeout is not None:
        body["timeout"] = timeout
    return api.ok("retrieve_futures", body)


def test_retrieve_futures_reports_each_clones_finished_requests_once(api: Api) -> None:
    sampler = _sampler(api)
    first = [_sample(api, sampler, seq) for seq in (0, 1)]
    cloned = _sample(api, sampler, 3 * CLONE)  # a sampling client restored from a pickle
    for request_id in (*first, cloned):
        api.poll(request_id)
    answer = _poll_all(api, sampler, 0, 0)
    assert [c["request_id"] for c in answer["completions"]] == first
    assert all(c["state"] == "finished" and c["response_payload_uncompressed_size"] > 0 for c in answer["completions"])
    # Nothing new after the cursor: an immediate empty answer with timeout 0 (the client's ack poll).
    assert _poll_all(api, sampler, 0, answer["cursor"], timeout=0) == {"completions": [], "cursor": answer["cursor"]}
    other = _poll_all(api, sampler, 3, 0)
    assert [c["request_id"] for c in other["completions"]] == [cloned]
    # The payload itself still comes from retrieve_future.
    assert len(api.poll(first[0])["sequences"]) == 1
    assert (
        api.as_key("tml-other").post("retrieve_futures", {"target": {"sampling_session_id": sampler}}).status_code
        == 404
    )


def test_retrieve_futures_long_polls_until_a_request_finishes(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    sampler = _sampler(api)
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    request_id = _sample(api, sampler, 0)
    timer = threading.Timer(0.2, engine.gate.set)
    timer.start()
    try:
        answer = _poll_all(api, sampler, 0, 0)  # long_poll_s is 0.3 in these tests
    finally:
        timer.cancel()
        engine.gate.set()
    if not answer["completions"]:  # a slow machine: the next poll sees it
        answer = _poll_all(api, sampler, 0, 0)
    assert [c["request_id"] for c in answer["completions"]] == [request_id]


def test_cancel_takes_a_queued_sample_out(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    sampler = _sampler(api)
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    try:
        running = _sample(api, sampler, 0)
        # Wait until the worker holds the first one, so the second stays queued.
        for _ in range(100):
            if any(name == "sample" for name, _ in engine.calls):
                break
            threading.Event().wait(0.02)
        queued = _sample(api, sampler, 1)
        assert api.ok("cancel_future", {"request_id": queued}) == {"status": "cancelled"}
        assert api.ok("cancel_future", {"request_id": running}) == {"status": "not cancelled"}
    finally:
        engine.gate.set()
    assert "sequences" in api.poll(running)
    failed = api.poll(queued)
    assert failed["category"] == "user" and "cancelled" in failed["error"]
    assert [n for name, n in engine.calls if name == "sample"] == [1]
    states = {c["request_id"]: c["state"] for c in _poll_all(api, sampler, 0, 0)["completions"]}
    assert states == {running: "finished", queued: "failed"}
    assert api.as_key("tml-other").post("cancel_future", {"request_id": running}).status_code == 404


def test_metadata_first_for_large_results(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server(metadata_only_min_bytes=0)
    sampler = _sampler(api)
    request_id = _sample(api, sampler, 0)
    api.poll(request_id)
    first = api.ok("retrieve_future", {"request_id": request_id, "allow_metadata_only": True})
    assert first["status"] == "complete_metadata" and first["response_payload_size"] > 0
    second = api.ok("retrieve_future", {"request_id": request_id, "allow_metadata_only": False})
    assert len(second["sequences"]) == 1
    small = make_fake_server()  # default threshold: a small result comes at once
    sampler = _sampler(small)
    request_id = _sample(small, sampler, 0)
    small.poll(request_id)
    assert "sequences" in small.ok("retrieve_future", {"request_id": request_id, "allow_metadata_only": True})

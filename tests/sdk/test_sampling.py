"""SamplingClient: session creation, request bodies, seq ids, 429 back-pressure, retries."""

from __future__ import annotations

import asyncio
import concurrent.futures

import httpx
import pytest

import tinker
from tinker._retry_handler import RetryHandler
from tinker.lib.retry_handler import RetryConfig

from .conftest import FakeClock, FakeServer

PROMPT = tinker.ModelInput.from_ints([1, 2, 3])
RESULT = {"type": "sample", "sequences": [{"stop_reason": "stop", "tokens": [5, 6], "logprobs": [-0.1, -0.2]}]}


@pytest.fixture
def sampler(server: FakeServer, client: tinker.ServiceClient) -> tinker.SamplingClient:
    server.route("POST", "/api/v1/create_sampling_session")(
        lambda r: httpx.Response(
            200, json={"type": "create_sampling_session", "sampling_session_id": "sess-1:sample:0"}
        )
    )
    server.route("POST", "/api/v1/asample")(lambda r: server.future(RESULT))
    return client.create_sampling_client(model_path="tinker://run/sampler_weights/w")


def test_create_validates_before_sending(server: FakeServer, client: tinker.ServiceClient) -> None:
    with pytest.raises(ValueError):
        client.create_sampling_client()
    with pytest.raises(ValueError, match="tinker://"):
        client.create_sampling_client(model_path="run/sampler_weights/w")
    assert server.calls("/api/v1/create_sampling_session") == []


def test_create_sampling_session_body(
    server: FakeServer, client: tinker.ServiceClient, sampler: tinker.SamplingClient
) -> None:
    asyncio.run(client.create_sampling_client_async(base_model="b/m"))
    assert server.bodies("/api/v1/create_sampling_session") == [
        {
            "session_id": "sess-1",
            "sampling_session_seq_id": 0,
            "base_model": None,
            "model_path": "tinker://run/sampler_weights/w",
        },
        {"session_id": "sess-1", "sampling_session_seq_id": 1, "base_model": "b/m", "model_path": None},
    ]


def test_sample_body_headers_and_result(server: FakeServer, sampler: tinker.SamplingClient) -> None:
    future = sampler.sample(PROMPT, 2, tinker.SamplingParams(max_tokens=5, stop=[7]))
    assert isinstance(future, concurrent.futures.Future)
    assert not isinstance(future, tinker.APIFuture)
    result = future.result(timeout=5)
    assert result.sequences[0].tokens == [5, 6]
    sampler.sample(
        PROMPT, 1, tinker.SamplingParams(temperature=0.0), include_prompt_logprobs=True, topk_prompt_logprobs=3
    ).result(timeout=5)
    first, second = server.bodies("/api/v1/asample")
    assert first == {
        "num_samples": 2,
        "prompt": {"chunks": [{"tokens": [1, 2, 3]}]},
        "sampling_params": {"max_tokens": 5, "stop": [7]},
        "sampling_session_id": "sess-1:sample:0",
        "seq_id": 0,
        "prompt_logprobs": False,
        "topk_prompt_logprobs": 0,
    }
    assert second["seq_id"] == 1
    assert second["sampling_params"] == {"temperature": 0.0}
    assert (second["prompt_logprobs"], second["topk_prompt_logprobs"]) == (True, 3)
    call = server.calls("/api/v1/asample")[0]
    assert call.headers["x-tinker-sampling-backpressure"] == "1"
    polls = [p for p in server.calls("/api/v1/retrieve_future")]
    assert {p.headers["x-tinker-request-type"] for p in polls} == {"Sample"}


def test_compute_logprobs(server: FakeServer, sampler: tinker.SamplingClient) -> None:
    server.route("POST", "/api/v1/asample")(lambda r: server.future({**RESULT, "prompt_logprobs": [None, -1.5, -0.5]}))
    assert sampler.compute_logprobs(PROMPT).result(timeout=5) == [None, -1.5, -0.5]
    assert asyncio.run(sampler.compute_logprobs_async(PROMPT)) == [None, -1.5, -0.5]
    body = server.bodies("/api/v1/asample")[0]
    assert (body["num_samples"], body["sampling_params"], body["prompt_logprobs"]) == (1, {"max_tokens": 1}, True)


def test_429_backs_off_and_resubmits_with_new_seq(
    server: FakeServer, sampler: tinker.SamplingClient, clock: FakeClock
) -> None:
    answers = [httpx.Response(429, json={"detail": "busy"}), httpx.Response(429, json={})]
    server.route("POST", "/api/v1/asample")(lambda r: answers.pop(0) if answers else server.future(RESULT))
    result = asyncio.run(sampler.sample_async(PROMPT, 1, tinker.SamplingParams()))
    assert result.sequences[0].stop_reason == "stop"
    calls = server.calls("/api/v1/asample")
    assert [c.headers["x-stainless-retry-count"] for c in calls] == ["0", "0", "0"]  # no HTTP-layer retries
    assert [b["seq_id"] for b in server.bodies("/api/v1/asample")] == [0, 1, 2]
    assert clock.sleeps == [1.0, 1.0]


def test_server_errors_go_through_layer_b(server: FakeServer, sampler: tinker.SamplingClient, clock: FakeClock) -> None:
    answers = [httpx.Response(503, json={})]
    server.route("POST", "/api/v1/asample")(lambda r: answers.pop(0) if answers else server.future(RESULT))
    sampler.sample(PROMPT, 1, tinker.SamplingParams()).result(timeout=5)
    assert [b["seq_id"] for b in server.bodies("/api/v1/asample")] == [0, 1]
    assert clock.sleeps == [1]


def test_expired_future_reruns_the_sample(server: FakeServer, sampler: tinker.SamplingClient) -> None:
    answers = [server.future(httpx.Response(410, json={}))]
    server.route("POST", "/api/v1/asample")(lambda r: answers.pop(0) if answers else server.future(RESULT))
    assert sampler.sample(PROMPT, 1, tinker.SamplingParams()).result(timeout=5).sequences
    assert [b["seq_id"] for b in server.bodies("/api/v1/asample")] == [0, 1]


def test_user_errors_are_not_retried(server: FakeServer, sampler: tinker.SamplingClient) -> None:
    server.route("POST", "/api/v1/asample")(lambda r: server.future({"error": "prompt too long", "category": "user"}))
    with pytest.raises(tinker.RequestFailedError):
        sampler.sample(PROMPT, 1, tinker.SamplingParams()).result(timeout=5)
    assert len(server.calls("/api/v1/asample")) == 1


def test_retry_config() -> None:
    config = RetryConfig(max_connections=3, retry_delay_base=0.0)
    assert hash(config) == hash(RetryConfig(max_connections=3, retry_delay_base=0.0))
    with pytest.raises(ValueError):
        RetryConfig(max_connections=0)
    handler = RetryHandler(RetryConfig(retry_delay_base=1.0, retry_delay_max=5.0, jitter_factor=0.25))
    for attempt in range(6):
        base = min(2.0**attempt, 5.0)
        assert max(0.0, base * 0.75) <= handler.retry_delay(attempt) <= min(base * 1.25, 5.0)
    assert handler.is_retryable(tinker.APIConnectionError(request=httpx.Request("GET", "http://x")))
    assert not handler.is_retryable(ValueError())


def test_progress_watchdog(server: FakeServer, client: tinker.ServiceClient) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        return httpx.Response(408, json={"type": "try_again", "request_id": "x", "queue_state": "active"})

    server.route("POST", "/api/v1/asample")(lambda r: server.future(lambda: never(r)))
    sampler = tinker.SamplingClient(
        client.holder, sampling_session_id="stuck", retry_config=RetryConfig(progress_timeout=0.1)
    )
    with pytest.raises(tinker.APIConnectionError, match=r"No progress made in 0\.1s"):
        sampler.sample(PROMPT, 1, tinker.SamplingParams()).result(timeout=5)

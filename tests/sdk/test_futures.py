"""The future protocol (spec §1.7) and the APIFuture contract."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import tinker
from tinker.lib.public_interfaces import AwaitableConcurrentFuture
from tinker.lib.retryable_exception import RetryableException
from tinker.types import RequestErrorCategory

from .conftest import FakeClock, FakeServer, fb_output, json_of

ADAM = tinker.AdamParams(learning_rate=1e-3)


def try_again(state: str = "active") -> httpx.Response:
    return httpx.Response(408, json={"type": "try_again", "request_id": "x", "queue_state": state})


def test_create_model_polls_until_ready(server: FakeServer, client: tinker.ServiceClient) -> None:
    server.route("POST", "/api/v1/create_model")(
        lambda r: server.future(try_again("paused_capacity"), try_again(), {"model_id": "m-1"})
    )
    tc = client.create_lora_training_client("base/model", rank=4, seed=3)
    assert tc.model_id == "m-1"
    assert json_of(server.calls("/api/v1/create_model")[0]) == {
        "session_id": "sess-1",
        "model_seq_id": 0,
        "base_model": "base/model",
        "user_metadata": None,
        "lora_config": {"rank": 4, "seed": 3, "train_unembed": True, "train_mlp": True, "train_attn": True},
    }
    polls = server.calls("/api/v1/retrieve_future")
    assert [p.headers["x-tinker-request-iteration"] for p in polls] == ["0", "1", "2"]
    assert {p.headers["x-tinker-request-type"] for p in polls} == {"CreateModel"}
    assert "x-tinker-create-promise-roundtrip-time" in polls[0].headers
    assert float(polls[0].headers["x-tinker-create-promise-roundtrip-time"]) >= 0
    assert "x-tinker-create-promise-roundtrip-time" not in polls[1].headers
    assert polls[0].headers["x-stainless-read-timeout"] == "45"
    assert polls[0].headers["x-stainless-raw-response"] == "raw"
    assert json_of(polls[0]) == {"request_id": "req-1"}


def test_queue_state_is_logged(
    server: FakeServer, training_client: tinker.TrainingClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future(try_again("paused_rate_limit"), {}))
    training_client.optim_step(ADAM).result()
    assert "concurrent models rate limit hit" in caplog.text


def test_try_again_200_and_5xx_repoll_without_sleeping(
    server: FakeServer, training_client: tinker.TrainingClient, clock: FakeClock
) -> None:
    server.route("POST", "/api/v1/optim_step")(
        lambda r: server.future(
            {"type": "try_again", "request_id": "x", "queue_state": "active"},
            httpx.Response(502, json={}),
            {"metrics": {"lr": 0.001}},
        )
    )
    result = training_client.optim_step(ADAM).result()
    assert result.metrics == {"lr": 0.001}
    assert clock.sleeps == []
    assert len(server.calls("/api/v1/retrieve_future")) == 4  # create_model + 3


def test_transport_errors_back_off(
    server: FakeServer, training_client: tinker.TrainingClient, clock: FakeClock
) -> None:
    server.route("POST", "/api/v1/optim_step")(
        lambda r: server.future(
            httpx.ConnectError("down"), httpx.ReadTimeout("slow"), httpx.ConnectError("down"), {"metrics": None}
        )
    )
    assert training_client.optim_step(ADAM).result().metrics is None
    assert clock.sleeps == [1, 2, 4]


def test_error_key_raises_request_failed(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future({"error": "bad lr", "category": "user"}))
    with pytest.raises(tinker.RequestFailedError) as info:
        training_client.optim_step(ADAM).result()
    err = info.value
    assert err.category is RequestErrorCategory.User
    assert err.request_id.startswith("req-")
    assert str(err).startswith(f"Request failed: bad lr for self.request_id='{err.request_id}' and expected type")
    assert "OptimStepResponse" in str(err)


def test_null_error_key_and_unknown_category(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future({"error": None, "category": "weird"}))
    with pytest.raises(tinker.RequestFailedError) as info:
        training_client.optim_step(ADAM).result()
    assert info.value.category is RequestErrorCategory.Unknown


def test_gone_future_is_retryable(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future(httpx.Response(410, json={})))
    with pytest.raises(RetryableException, match="Promise expired"):
        training_client.optim_step(ADAM).result()


def test_unknown_request_id_is_value_error(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/optim_step")(lambda r: httpx.Response(200, json={"request_id": "never-issued"}))
    with pytest.raises(ValueError, match="Error retrieving result") as info:
        training_client.optim_step(ADAM).result()
    assert isinstance(info.value.__cause__, tinker.NotFoundError)


def test_invalid_result_is_value_error(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/forward")(lambda r: server.future({"metrics": "not a dict"}))
    empty = training_client.forward([], "cross_entropy").result()  # no data: no request
    assert (empty.loss_fn_output_type, empty.loss_fn_outputs, empty.metrics) == ("", [], {})
    assert server.calls("/api/v1/forward") == []
    weights: dict[str, Any] = {"weights": [1.0]}  # a list, which Datum's before-validator converts
    data = [tinker.Datum(model_input=tinker.ModelInput.from_ints([1]), loss_fn_inputs=weights)]
    with pytest.raises(ValueError, match="Error retrieving result"):
        training_client.forward(data, "cross_entropy").result()


def test_result_is_cached_and_timeout(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    ready = asyncio.Event()

    async def slow_then_ready() -> httpx.Response:
        if not ready.is_set():
            await asyncio.sleep(0.01)
            return try_again()
        return httpx.Response(200, json={"metrics": {"a:sum": 1.0}})

    server.route("POST", "/api/v1/optim_step")(lambda r: server.future(lambda: slow_then_ready()))
    future = training_client.optim_step(ADAM)
    assert isinstance(future, tinker.APIFuture)
    assert isinstance(future, AwaitableConcurrentFuture)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.05)

    async def wait_async() -> None:
        with pytest.raises(TimeoutError):
            await future.result_async(timeout=0.05)

    asyncio.run(wait_async())
    ready.set()
    first = future.result(timeout=5)
    polls = len(server.calls("/api/v1/retrieve_future"))
    assert future.result() is first
    assert asyncio.run(future.result_async()) is first
    assert len(server.calls("/api/v1/retrieve_future")) == polls


def test_polling_starts_before_result_is_requested(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future({"metrics": None}))
    future = training_client.optim_step(ADAM)
    concurrent_future = future.future()  # type: ignore[attr-defined]
    concurrent_future.result(timeout=5)
    assert concurrent_future.done()


def test_forward_backward_result_via_helper(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/forward_backward")(lambda r: server.future(fb_output()))
    weights: dict[str, Any] = {"weights": [1, 1]}  # a list, which Datum's before-validator converts
    data = [tinker.Datum(model_input=tinker.ModelInput.from_ints([1, 2]), loss_fn_inputs=weights)]
    out = training_client.forward_backward(data, "cross_entropy").result()
    assert out.metrics == {"loss:sum": 1.0}

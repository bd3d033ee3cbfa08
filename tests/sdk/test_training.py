"""TrainingClient: seq ids, ordering and pipelining, chunking, checkpoints, async twins."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

import tinker
from tinker._chunking import chunk_data, reduce_metrics

from .conftest import FakeServer, fb_output, json_of

ADAM = tinker.AdamParams(learning_rate=2e-4)


def datum(tokens: int = 3, weights: Any = None) -> tinker.Datum:
    # Plain lists, which Datum's before-validator turns into TensorData (typed Any for that reason).
    inputs: dict[str, Any] = {"target_tokens": list(range(1, tokens + 1)), "weights": weights or [1.0] * tokens}
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(list(range(tokens))), loss_fn_inputs=inputs)


def echo_fb(server: FakeServer, path: str = "/api/v1/forward_backward", key: str = "forward_backward_input") -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        n = len(json_of(request)[key]["data"])
        return server.future(fb_output(n))

    server.route("POST", path)(handler)


def test_model_seq_ids_and_lora_assertion(server: FakeServer, client: tinker.ServiceClient) -> None:
    server.route("POST", "/api/v1/create_model")(lambda r: server.future({"model_id": "m"}))
    client.create_lora_training_client("b")
    client.create_lora_training_client("b", user_metadata={"k": "v"})
    bodies = server.bodies("/api/v1/create_model")
    assert [b["model_seq_id"] for b in bodies] == [0, 1]
    assert bodies[0]["lora_config"]["rank"] == 32
    assert bodies[1]["user_metadata"] == {"k": "v"}
    with pytest.raises(AssertionError):
        client.create_lora_training_client("b", train_mlp=False, train_attn=False, train_unembed=False)
    assert len(server.bodies("/api/v1/create_model")) == 2


def test_wire_bodies_and_seq_ids(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    echo_fb(server)
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future({"metrics": None}))
    data = [datum(3, weights=[0, 1, 1])]
    fb = training_client.forward_backward(data, "cross_entropy")
    opt = training_client.optim_step(ADAM)
    assert fb.result().loss_fn_outputs[0]["logprobs"].data == [-1.0, -2.0]
    opt.result()
    assert server.bodies("/api/v1/forward_backward") == [
        {
            "forward_backward_input": {
                "data": [
                    {
                        "model_input": {"chunks": [{"tokens": [0, 1, 2]}]},
                        "loss_fn_inputs": {
                            "target_tokens": {"data": [1, 2, 3], "dtype": "int64", "shape": [3]},
                            "weights": {"data": [0, 1, 1], "dtype": "float32", "shape": [3]},
                        },
                    }
                ],
                "loss_fn": "cross_entropy",
                "loss_fn_config": None,
            },
            "model_id": "sess-1:train:0",
            "seq_id": 1,
        }
    ]
    assert server.bodies("/api/v1/optim_step") == [
        {"adam_params": {"learning_rate": 2e-4}, "model_id": "sess-1:train:0", "seq_id": 2}
    ]


def test_submits_are_serialized_and_results_pipelined(
    server: FakeServer, training_client: tinker.TrainingClient
) -> None:
    events: list[str] = []
    optim_done = threading.Event()

    async def slow_fb(request: httpx.Request) -> httpx.Response:
        events.append("fb-start")
        await asyncio.sleep(0.1)
        events.append("fb-end")
        # The forward_backward result only appears once optim_step's result was read.
        return server.future(
            lambda: (
                httpx.Response(200, json=fb_output())
                if optim_done.is_set()
                else httpx.Response(408, json={"type": "try_again", "request_id": "x", "queue_state": "active"})
            )
        )

    def optim(request: httpx.Request) -> httpx.Response:
        events.append("optim-start")
        return server.future({"metrics": {"x": 1.0}})

    server.route("POST", "/api/v1/forward_backward")(slow_fb)
    server.route("POST", "/api/v1/optim_step")(optim)
    fb = training_client.forward_backward([datum()], "cross_entropy")
    opt: list[Any] = []
    thread = threading.Thread(target=lambda: opt.append(training_client.optim_step(ADAM)))
    thread.start()
    thread.join()
    assert opt[0].result(timeout=5).metrics == {"x": 1.0}
    optim_done.set()
    assert fb.result(timeout=5).metrics == {"loss:sum": 1.0}
    assert events == ["fb-start", "fb-end", "optim-start"]
    assert [b["seq_id"] for b in server.bodies("/api/v1/forward_backward")] == [1]
    assert [b["seq_id"] for b in server.bodies("/api/v1/optim_step")] == [2]


def test_many_threads_keep_call_order(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future({"metrics": None}))
    futures = [training_client.optim_step(ADAM) for _ in range(20)]
    for f in futures:
        f.result(timeout=5)
    assert [b["seq_id"] for b in server.bodies("/api/v1/optim_step")] == list(range(1, 21))


def test_failed_submit_releases_its_turn(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/save_weights")(lambda r: httpx.Response(400, json={"detail": "bad name"}))
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future({"metrics": None}))
    bad = training_client.save_state("x")
    good = training_client.optim_step(ADAM)
    with pytest.raises(tinker.BadRequestError):
        bad.result(timeout=5)
    good.result(timeout=5)
    assert server.bodies("/api/v1/optim_step")[0]["seq_id"] == 2


def test_chunking_and_metric_merge(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    metrics = [
        {
            "loss:sum": 2.0,
            "acc:mean": 1.0,
            "m:max": 3.0,
            "n:min": 3.0,
            "id:unique": 7.0,
            "x:weird": 1.0,
            "gone:sum": 1.0,
            "s:slack": 1.0,
        },
        {
            "loss:sum": 3.0,
            "acc:mean": 0.0,
            "m:max": 5.0,
            "n:min": 1.0,
            "id:unique": 8.0,
            "x:weird": 1.0,
            "s:slack": 4.0,
        },
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        n = len(json_of(request)["forward_input"]["data"])
        return server.future({**fb_output(n), "metrics": metrics.pop(0)})

    server.route("POST", "/api/v1/forward")(handler)
    out = training_client.forward([datum() for _ in range(130)], "cross_entropy").result(timeout=5)
    bodies = server.bodies("/api/v1/forward")
    assert [len(b["forward_input"]["data"]) for b in bodies] == [128, 2]
    assert [b["seq_id"] for b in bodies] == [1, 2]
    assert len(out.loss_fn_outputs) == 130
    mean = (1.0 * 128 + 0.0 * 2) / 130
    assert out.metrics == pytest.approx(
        {
            "loss:sum": 5.0,
            "acc:mean": mean,
            "m:max": 5.0,
            "n:min": 1.0,
            "id:unique": 7.0,
            "id:unique_1": 8.0,
            "s:slack": 4.0 - (1.0 * 128 + 4.0 * 2) / 130,
        }
    )
    assert {r.headers["x-tinker-request-type"] for r in server.calls("/api/v1/retrieve_future")[1:]} == {"Forward"}


def test_chunk_limits() -> None:
    # numbers per datum = tokens + target_tokens + weights = 3 * length
    big = [datum(200_000) for _ in range(3)]  # 600k numbers each: one chunk apiece
    assert [len(c) for c in chunk_data(big)] == [1, 1, 1]
    medium = [datum(50_000) for _ in range(5)]  # 150k each: three fit in 500k
    assert [len(c) for c in chunk_data(medium)] == [3, 2]
    assert [len(c) for c in chunk_data([datum() for _ in range(257)])] == [128, 128, 1]
    assert chunk_data([]) == []


def test_metric_key_without_reduction_fails() -> None:
    with pytest.raises(ValueError):
        reduce_metrics([{"loss": 1.0}], [1.0])
    h1 = reduce_metrics([{"h:hash_unordered": 1.0}, {"h:hash_unordered": 2.0}], [1, 1])
    h2 = reduce_metrics([{"h:hash_unordered": 2.0}, {"h:hash_unordered": 1.0}], [1, 1])
    assert h1 == h2


def test_checkpoint_ops(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/save_weights")(
        lambda r: server.future({"path": "tinker://sess-1:train:0/weights/s1", "type": "save_weights"})
    )
    server.route("POST", "/api/v1/load_weights")(lambda r: server.future({}))
    server.route("POST", "/api/v1/save_weights_for_sampler")(
        lambda r: server.future({"path": "tinker://sess-1:train:0/sampler_weights/w1", "sampling_session_id": None})
    )
    assert training_client.save_state("s1").result().path.endswith("/weights/s1")
    training_client.load_state("tinker://r/weights/s1").result()
    training_client.load_state_with_optimizer("tinker://r/weights/s1").result()
    saved = training_client.save_weights_for_sampler("w1").result()
    assert isinstance(saved, tinker.types.SaveWeightsForSamplerResponse)
    assert saved.path.endswith("/sampler_weights/w1") and saved.type is None
    assert server.bodies("/api/v1/save_weights") == [{"model_id": "sess-1:train:0", "path": "s1", "seq_id": 1}]
    assert server.bodies("/api/v1/load_weights") == [
        {"model_id": "sess-1:train:0", "path": "tinker://r/weights/s1", "optimizer": False, "seq_id": 2},
        {"model_id": "sess-1:train:0", "path": "tinker://r/weights/s1", "optimizer": True, "seq_id": 3},
    ]
    assert server.bodies("/api/v1/save_weights_for_sampler") == [
        {"model_id": "sess-1:train:0", "path": "w1", "seq_id": 4}
    ]


def test_ephemeral_sampler_save(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/save_weights_for_sampler")(
        lambda r: server.future(
            {"path": None, "sampling_session_id": "sess-1:sample:0", "type": "save_weights_for_sampler"}
        )
    )
    server.route("POST", "/api/v1/asample")(
        lambda r: server.future({"sequences": [{"stop_reason": "length", "tokens": [5]}]})
    )
    sampler = training_client.save_weights_and_get_sampling_client("ignored-name")
    assert isinstance(sampler, tinker.SamplingClient)
    assert server.bodies("/api/v1/save_weights_for_sampler") == [
        {"model_id": "sess-1:train:0", "sampling_session_seq_id": 0, "seq_id": 1}
    ]
    response = sampler.sample(tinker.ModelInput.from_ints([1]), 1, tinker.SamplingParams()).result(timeout=5)
    assert response.sequences[0].tokens == [5]
    assert server.bodies("/api/v1/asample")[0]["sampling_session_id"] == "sess-1:sample:0"
    assert server.calls("/api/v1/create_sampling_session") == []
    # The ephemeral save shares the sampling_session_seq_id counter with create_sampling_session.
    training_client.save_weights_and_get_sampling_client_submit().result(timeout=5)
    assert server.bodies("/api/v1/save_weights_for_sampler")[1]["sampling_session_seq_id"] == 1


def test_ephemeral_save_with_a_path_is_rejected(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/save_weights_for_sampler")(
        lambda r: server.future({"path": "tinker://x/sampler_weights/y", "sampling_session_id": "s"})
    )
    with pytest.raises(AssertionError):
        training_client.save_weights_and_get_sampling_client()


def test_async_twins_return_api_futures(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    echo_fb(server)
    echo_fb(server, "/api/v1/forward", "forward_input")
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future({"metrics": {"lr": 1.0}}))
    server.route("POST", "/api/v1/save_weights")(lambda r: server.future({"path": "tinker://m/weights/a"}))
    server.route("POST", "/api/v1/get_info")(
        lambda r: httpx.Response(200, json={"model_id": "m", "model_data": {"model_name": "b"}, "is_lora": True})
    )

    async def main() -> None:
        fut = await training_client.forward_backward_async([datum()], "cross_entropy")
        assert isinstance(fut, tinker.APIFuture)
        assert (await fut).metrics == {"loss:sum": 1.0}
        fwd = await training_client.forward_async([datum()], "cross_entropy", {"c": 1.0})
        assert len((await fwd.result_async()).loss_fn_outputs) == 1
        opt = await training_client.optim_step_async(ADAM)
        assert (await opt).metrics == {"lr": 1.0}
        saved = await (await training_client.save_state_async("a"))
        assert saved.path == "tinker://m/weights/a"
        info = await training_client.get_info_async()
        assert info.model_data.model_name == "b"

    asyncio.run(main())
    assert [b["seq_id"] for b in server.bodies("/api/v1/forward_backward")] == [1]
    assert server.bodies("/api/v1/forward")[0]["forward_input"]["loss_fn_config"] == {"c": 1.0}
    assert server.bodies("/api/v1/get_info") == [{"model_id": "sess-1:train:0"}]


def test_forward_backward_custom(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    torch = pytest.importorskip("torch")
    echo_fb(server)
    echo_fb(server, "/api/v1/forward", "forward_input")

    def loss_fn(data: list[tinker.Datum], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
        loss = sum((lp * 2).sum() for lp in logprobs)
        return loss, {"custom": 42.0}

    out = training_client.forward_backward_custom([datum(2), datum(2)], loss_fn).result(timeout=5)
    assert out.metrics == {"loss:sum": 1.0, "custom": 42.0}
    assert server.bodies("/api/v1/forward")[0]["forward_input"]["loss_fn"] == "cross_entropy"
    backward = server.bodies("/api/v1/forward_backward")[0]["forward_backward_input"]["data"]
    assert backward[0]["loss_fn_inputs"]["weights"] == {"data": [-2.0, -2.0], "dtype": "float32", "shape": [2]}
    assert backward[0]["loss_fn_inputs"]["target_tokens"]["data"] == [1, 2]
    assert torch is not None

    async def main() -> tinker.ForwardBackwardOutput:
        return await (await training_client.forward_backward_custom_async([datum(2)], loss_fn))

    assert asyncio.run(main()).metrics["custom"] == 42.0


def test_training_client_from_state(server: FakeServer, client: tinker.ServiceClient) -> None:
    server.route("POST", "/api/v1/weights_info")(
        lambda r: httpx.Response(200, json={"base_model": "b/m", "is_lora": True, "lora_rank": 16})
    )
    server.route("POST", "/api/v1/create_model")(lambda r: server.future({"model_id": "new"}))
    server.route("POST", "/api/v1/load_weights")(lambda r: server.future({"path": "p"}))
    path = "tinker://old/weights/s1"
    tc = client.create_training_client_from_state(path, user_metadata={"a": "b"})
    assert tc.model_id == "new"
    tc2 = client.create_training_client_from_state_with_optimizer(path)
    assert asyncio.run(client.create_training_client_from_state_async(path)).model_id == "new"
    assert server.bodies("/api/v1/weights_info")[0] == {"tinker_path": path}
    create = server.bodies("/api/v1/create_model")
    assert [c["lora_config"]["rank"] for c in create] == [16, 16, 16]
    assert create[0]["user_metadata"] == {"a": "b"} and create[1]["user_metadata"] is None
    loads = server.bodies("/api/v1/load_weights")
    assert [(b["optimizer"], b["seq_id"]) for b in loads] == [(False, 1), (True, 1), (False, 1)]
    assert tc2.model_seq_id == 1


def test_async_from_state_requires_lora(server: FakeServer, client: tinker.ServiceClient) -> None:
    server.route("POST", "/api/v1/weights_info")(
        lambda r: httpx.Response(200, json={"base_model": "b/m", "is_lora": False})
    )
    with pytest.raises(AssertionError):
        asyncio.run(client.create_training_client_from_state_async("tinker://old/weights/s1"))


def test_missing_model_id(client: tinker.ServiceClient) -> None:
    tc = tinker.TrainingClient(client.holder, model_seq_id=0, model_id=None)
    with pytest.raises(AssertionError, match="no model_id"):
        tc.optim_step(ADAM)


def test_wall_clock_is_fast() -> None:
    start = time.monotonic()
    assert time.monotonic() - start < 1

"""The walking-skeleton endpoints over HTTP, on the fake engine."""

from __future__ import annotations

from .conftest import FAKE_MODEL, FAKE_MODEL_B, Api, fb_body


def test_health_capabilities_telemetry(api: Api) -> None:
    assert api.client.get("/api/v1/healthz").json() == {"status": "ok"}
    caps = api.get("get_server_capabilities").json()
    # max_context_length appears once a model has been loaded (they load lazily).
    assert [m["model_name"] for m in caps["supported_models"]] == [FAKE_MODEL, FAKE_MODEL_B]
    assert all(m["trainable"] and m["sampleable"] for m in caps["supported_models"])
    anon = api.as_key(None)
    assert anon.post("telemetry", {"anything": [1, 2]}).json() == {"status": "accepted"}
    assert anon.post("telemetry", content=b"not json").json() == {"status": "accepted"}


def test_auth_required(api: Api) -> None:
    for key in (None, "", "   "):
        response = api.as_key(key).post("create_session", {"tags": [], "user_metadata": None, "sdk_version": "0.5.1"})
        assert response.status_code == 401
        assert "X-API-Key" in response.json()["detail"]


def test_session_and_heartbeat(api: Api) -> None:
    response = api.ok("create_session", {"tags": ["a", "b"], "user_metadata": {"u": "1"}, "sdk_version": "0.5.1"})
    assert response["type"] == "create_session"
    sid = response["session_id"]
    assert api.ok("session_heartbeat", {"session_id": sid}) == {"type": "session_heartbeat"}
    assert api.post("session_heartbeat", {"session_id": "nope"}).status_code == 404


def test_train_and_sample_flow(api: Api) -> None:
    sid = api.session()
    fut = api.ok(
        "create_model",
        {
            "session_id": sid,
            "model_seq_id": 0,
            "base_model": FAKE_MODEL,
            "user_metadata": None,
            "lora_config": {"rank": 8, "seed": None, "train_unembed": True, "train_mlp": True, "train_attn": True},
        },
    )
    assert set(fut) == {"request_id", "model_id"}
    created = api.poll(fut["request_id"])
    assert created == {"model_id": f"{sid}:train:0", "type": "create_model"}
    model_id = created["model_id"]

    info = api.ok("get_info", {"model_id": model_id})
    assert info == {
        "type": "get_info",
        "model_data": {"arch": "llama", "model_name": FAKE_MODEL, "tokenizer_id": FAKE_MODEL},
        "model_id": model_id,
        "is_lora": True,
        "lora_rank": 8,
        "model_name": FAKE_MODEL,
        "optimizer_config": {"type": "adamw"},
    }

    out = api.result("forward_backward", fb_body(model_id, 1))
    assert set(out) == {"loss_fn_output_type", "loss_fn_outputs", "metrics"}
    assert out["metrics"]["loss:sum"] == 6.0
    assert out["loss_fn_outputs"] == [{"logprobs": {"data": [-2.0, -2.0, -2.0], "dtype": "float32", "shape": [3]}}]
    fwd = api.result(
        "forward",
        {"forward_input": fb_body(model_id, 0)["forward_backward_input"], "model_id": model_id, "seq_id": 2},
    )
    assert fwd["metrics"] == {"loss:sum": 6.0}
    step = api.result("optim_step", {"adam_params": {"learning_rate": 0.1}, "model_id": model_id, "seq_id": 3})
    assert step["metrics"]["step"] == 1.0
    after = api.result(
        "forward", {"forward_input": fb_body(model_id, 0)["forward_backward_input"], "model_id": model_id, "seq_id": 4}
    )
    assert after["metrics"]["loss:sum"] < 6.0

    named = api.result("save_weights_for_sampler", {"model_id": model_id, "path": "step-1", "seq_id": 5})
    assert named == {"path": f"tinker://{model_id}/sampler_weights/step-1", "type": "save_weights_for_sampler"}
    eph = api.result("save_weights_for_sampler", {"model_id": model_id, "sampling_session_seq_id": 0, "seq_id": 6})
    assert eph == {"path": None, "sampling_session_id": f"{sid}:sample:0", "type": "save_weights_for_sampler"}

    sample = api.result(
        "asample",
        {
            "num_samples": 2,
            "prompt": {"chunks": [{"tokens": [1, 2, 3]}]},
            "sampling_params": {"max_tokens": 5, "stop": [7]},
            "sampling_session_id": eph["sampling_session_id"],
            "seq_id": 0,
            "prompt_logprobs": False,
            "topk_prompt_logprobs": 0,
        },
    )
    assert sample["type"] == "sample"
    assert len(sample["sequences"]) == 2
    assert all(len(s["tokens"]) == 5 and len(s["logprobs"]) == 5 for s in sample["sequences"])
    assert sample["prompt_logprobs"] is None and sample["topk_prompt_logprobs"] is None

    # A sampling session from the named checkpoint, and one on the base model.
    created = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 1, "base_model": None, "model_path": named["path"]},
    )
    assert created == {"type": "create_sampling_session", "sampling_session_id": f"{sid}:sample:1"}
    base = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 2, "base_model": FAKE_MODEL, "model_path": None},
    )
    for sampler in (created["sampling_session_id"], base["sampling_session_id"]):
        out = api.result(
            "asample",
            {
                "num_samples": 1,
                "prompt": {"chunks": [{"tokens": [1, 2, 3]}]},
                "sampling_params": {"max_tokens": 1},
                "sampling_session_id": sampler,
                "seq_id": 1,
                "prompt_logprobs": True,
                "topk_prompt_logprobs": 2,
            },
        )
        assert out["prompt_logprobs"] == [None, -1.0, -1.0]
        assert out["topk_prompt_logprobs"] == [None, [[1, -0.125], [2, -0.25]], [[1, -0.125], [2, -0.25]]]


def test_tokenizer_files(api: Api) -> None:
    out = api.ok("tokenizer_files", {"tokenizer_id": FAKE_MODEL})
    assert out["tokenizer_id"] == FAKE_MODEL
    assert set(out["files"]) == {"tokenizer.json", "tokenizer_config.json"}
    assert api.post("tokenizer_files", {"tokenizer_id": "nope/x"}).status_code == 404

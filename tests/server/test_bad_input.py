"""Bad input gets a clear 4xx (or a failed future), and the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from .conftest import FAKE_MODEL, FAKE_MODEL_B, OTHER_KEY, Api, datum, fb_body
from .fake_engine import BAD_TOKEN, CRASH_TOKEN


def _detail(response: httpx.Response) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail", "request_id"}
    return body["detail"]


def _sample_body(sampler: str, **params: object) -> dict:
    return {
        "num_samples": params.pop("num_samples", 1),
        "prompt": params.pop("prompt", {"chunks": [{"tokens": [1, 2, 3]}]}),
        "sampling_params": params,
        "sampling_session_id": sampler,
        "seq_id": 0,
        "prompt_logprobs": False,
        "topk_prompt_logprobs": 0,
    }


@pytest.fixture
def run(api: Api) -> tuple[str, str]:
    sid = api.session()
    return sid, api.create_model(sid)


def test_malformed_json_and_missing_fields(api: Api) -> None:
    response = api.post("create_session", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "malformed JSON" in _detail(response)
    response = api.post("create_session", {"tags": []})
    assert response.status_code == 400
    detail = _detail(response)
    assert "sdk_version" in detail  # user_metadata may be absent: 0.18+ clients drop nulls
    # Unknown keys are ignored, as the official service does: newer clients add fields.
    response = api.post("create_session", {"tags": [], "user_metadata": None, "sdk_version": "0.5.1", "bogus": 1})
    assert response.status_code == 200 and response.json()["session_id"]


def test_unknown_base_model(api: Api) -> None:
    sid = api.session()
    response = api.post(
        "create_model",
        {
            "session_id": sid,
            "model_seq_id": 0,
            "base_model": "no/such-model",
            "user_metadata": None,
            "lora_config": None,
        },
    )
    assert response.status_code == 400
    detail = _detail(response)
    assert "no/such-model" in detail and FAKE_MODEL in detail and FAKE_MODEL_B in detail


def test_bad_lora_config(api: Api) -> None:
    sid = api.session()
    body = {"session_id": sid, "model_seq_id": 0, "base_model": FAKE_MODEL, "user_metadata": None}
    flags = {"seed": None, "train_unembed": False, "train_mlp": False, "train_attn": False}
    assert "at least one" in _detail(api.post("create_model", {**body, "lora_config": {"rank": 4, **flags}}))
    assert "rank" in _detail(api.post("create_model", {**body, "lora_config": {"rank": 0}}))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["model_input"]["chunks"][0].update(tokens=[1, 2, 9999]),
            "token id 9999 is outside the vocabulary",
        ),
        (lambda d: d["loss_fn_inputs"]["target_tokens"].update(data=[1, 2, -1]), "token id -1"),
        (
            lambda d: d["loss_fn_inputs"]["weights"].update(data=[1, 1], shape=[2]),
            "'weights'] has 2 values but model_input has 3",
        ),
        (lambda d: d["loss_fn_inputs"]["weights"].update(shape=[4]), "shape [4] needs 4 values"),
        (lambda d: d["loss_fn_inputs"].pop("target_tokens"), "missing 'target_tokens'"),
        (lambda d: d["loss_fn_inputs"].update(foo={"data": [1, 1, 1], "dtype": "float32"}), "unknown key 'foo'"),
        (lambda d: d["model_input"].update(chunks=[]), "model_input is empty"),
        (
            lambda d: d["model_input"]["chunks"].append(
                {"data": "aGVsbG8=", "format": "png", "height": 2, "width": 2, "tokens": 4}
            ),
            "image chunks are not supported",
        ),
    ],
)
def test_bad_datum(api: Api, run: tuple[str, str], mutate: Callable[[dict[str, Any]], object], expected: str) -> None:
    _sid, model_id = run
    d = datum([1, 2, 3])
    mutate(d)
    assert expected in _detail(api.post("forward_backward", fb_body(model_id, 1, [d])))
    # The server still serves, and the rejected seq_id left no hole.
    assert api.result("forward_backward", fb_body(model_id, 1))["metrics"]["loss:sum"] == 6.0


def test_unknown_loss_fn(api: Api, run: tuple[str, str]) -> None:
    _sid, model_id = run
    detail = _detail(api.post("forward_backward", fb_body(model_id, 1, loss_fn="mse")))
    assert "forward_backward_input.loss_fn" in detail and "cross_entropy" in detail


def test_rl_loss_needs_its_inputs(api: Api, run: tuple[str, str]) -> None:
    _sid, model_id = run
    detail = _detail(api.post("forward_backward", fb_body(model_id, 1, loss_fn="ppo")))
    assert "'advantages'" in detail and "'logprobs'" in detail


def test_unknown_and_foreign_model_ids(api: Api, run: tuple[str, str]) -> None:
    _sid, model_id = run
    assert "not found" in _detail(api.post("forward_backward", fb_body("nope:train:0", 1)))
    other = api.as_key(OTHER_KEY)
    for path, body in [
        ("forward_backward", fb_body(model_id, 1)),
        ("get_info", {"model_id": model_id}),
        ("optim_step", {"adam_params": {}, "model_id": model_id, "seq_id": 1}),
        ("unload_model", {"model_id": model_id}),
    ]:
        assert other.post(path, body).status_code == 404
    # The other tenant cannot use this tenant's session either.
    sid = run[0]
    body = {"session_id": sid, "model_seq_id": 5, "base_model": FAKE_MODEL, "user_metadata": None, "lora_config": None}
    assert other.post("create_model", body).status_code == 404


def test_unknown_request_id(api: Api, run: tuple[str, str]) -> None:
    assert api.post("retrieve_future", {"request_id": "nope"}).status_code == 404
    fut = api.ok("forward_backward", fb_body(run[1], 1))
    assert api.as_key(OTHER_KEY).post("retrieve_future", {"request_id": fut["request_id"]}).status_code == 404


def test_engine_errors_become_failed_futures(api: Api, run: tuple[str, str]) -> None:
    _sid, model_id = run
    fut = api.ok("forward_backward", fb_body(model_id, 1, [datum([BAD_TOKEN, 1, 2])]))
    assert api.poll(fut["request_id"]) == {"error": "this datum cannot be trained on", "category": "user"}
    fut = api.ok("forward_backward", fb_body(model_id, 2, [datum([CRASH_TOKEN, 1, 2])]))
    failed = api.poll(fut["request_id"])
    assert failed["category"] == "server"
    # A generic sentence with the request id; the exception's text stays in the log.
    assert failed["error"].startswith("internal server error (request id ") and fut["request_id"] in failed["error"]
    assert "ZeroDivisionError" not in failed["error"]
    # Still serving; later ops of the run still run.
    assert api.result("forward_backward", fb_body(model_id, 3))["metrics"]["loss:sum"] == 6.0


def test_bad_sampling_params(api: Api) -> None:
    sid = api.session()
    sampler = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE_MODEL, "model_path": None},
    )["sampling_session_id"]
    cases = [
        (_sample_body(sampler, max_tokens=-1), "max_tokens must be a non-negative integer"),
        (_sample_body(sampler, num_samples=0), "num_samples must be an integer from 1 to 512"),
        (_sample_body(sampler, temperature=-0.5), "temperature"),
        (_sample_body(sampler, top_p=0), "top_p"),
        (_sample_body(sampler, top_k=-2), "top_k"),
        (_sample_body(sampler, stop=[9999]), "stop token id 9999 is outside the vocabulary"),
        (
            _sample_body(sampler, prompt={"chunks": [{"tokens": [1, 500]}]}),
            "prompt token id 500 is outside the vocabulary",
        ),
        (_sample_body(sampler, max_tokens=1000), "exceeds the model's context"),
        (_sample_body("nope:sample:0"), "not found"),
    ]
    for body, expected in cases:
        assert expected in _detail(api.post("asample", body)), expected
    assert api.result("asample", _sample_body(sampler, max_tokens=2))["sequences"]


def test_create_sampling_session_errors(api: Api, run: tuple[str, str]) -> None:
    sid, model_id = run
    base = {"session_id": sid, "sampling_session_seq_id": 0}
    assert "needs a base_model or a model_path" in _detail(
        api.post("create_sampling_session", {**base, "base_model": None, "model_path": None})
    )
    assert "Invalid tinker path" in _detail(
        api.post("create_sampling_session", {**base, "base_model": None, "model_path": "tinker://x/bogus/y"})
    )
    assert "not found" in _detail(
        api.post(
            "create_sampling_session",
            {**base, "base_model": None, "model_path": f"tinker://{model_id}/sampler_weights/missing"},
        )
    )
    assert "not served" in _detail(
        api.post("create_sampling_session", {**base, "base_model": "x/y", "model_path": None})
    )


@pytest.mark.parametrize("name", ["", "a/b", "..", "../x", ".hidden", "a b", "x" * 300])
def test_bad_checkpoint_names(api: Api, run: tuple[str, str], name: str) -> None:
    _sid, model_id = run
    for path in ("save_weights", "save_weights_for_sampler"):
        response = api.post(path, {"model_id": model_id, "path": name, "seq_id": 1})
        assert response.status_code == 400, (path, name)
        assert "checkpoint name" in _detail(response)


def test_save_for_sampler_needs_name_or_seq(api: Api, run: tuple[str, str]) -> None:
    assert "needs a name" in _detail(api.post("save_weights_for_sampler", {"model_id": run[1], "seq_id": 1}))

"""End to end over HTTP with the real engine and the tiny test model."""

from __future__ import annotations

import io
import pathlib
import tarfile
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tinker_server.app import create_app
from tinker_server.engine import TINY_MODEL
from tinker_server.settings import Settings

from .conftest import Api, datum

PROMPTS = [[5, 17, 42, 99, 7, 3], [11, 12, 13, 14, 15, 16, 17]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("tiny-home")
    client = TestClient(create_app(Settings(home=home, models=[TINY_MODEL], long_poll_s=1.0)))
    with client:
        yield Api(client)


def _create(api: Api, sid: str, seq: int, rank: int = 8, seed: int | None = 3) -> str:
    body = {
        "session_id": sid,
        "model_seq_id": seq,
        "base_model": TINY_MODEL,
        "user_metadata": {"purpose": "test"},
        "lora_config": {"rank": rank, "seed": seed, "train_unembed": True, "train_mlp": True, "train_attn": True},
    }
    return api.result("create_model", body)["model_id"]


def _data() -> list[dict]:
    return [datum(p, [*p[1:], 2], [0] + [1] * (len(p) - 1)) for p in PROMPTS]


def _fb(model_id: str, seq: int, kind: str = "forward_backward") -> dict:
    key = "forward_backward_input" if kind == "forward_backward" else "forward_input"
    return {
        key: {"data": _data(), "loss_fn": "cross_entropy", "loss_fn_config": None},
        "model_id": model_id,
        "seq_id": seq,
    }


def _optim(model_id: str, seq: int) -> dict:
    return {"adam_params": {"learning_rate": 0.02}, "model_id": model_id, "seq_id": seq}


def _logprobs(result: dict) -> list[np.ndarray]:
    return [np.asarray(out["logprobs"]["data"]) for out in result["loss_fn_outputs"]]


def test_pipelined_training_reduces_loss(tiny: Api) -> None:
    model_id = _create(tiny, tiny.session(), 0)
    futures = []
    for step in range(6):  # submit everything before waiting
        futures.append(tiny.ok("forward_backward", _fb(model_id, 2 * step + 1))["request_id"])
        futures.append(tiny.ok("optim_step", _optim(model_id, 2 * step + 2))["request_id"])
    results = [tiny.poll(r) for r in futures]
    losses = [r["metrics"]["loss:sum"] for r in results[0::2]]
    steps = [r["metrics"]["step:max"] for r in results[1::2]]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert losses[-1] < 0.7 * losses[0], losses
    out = results[0]
    assert out["loss_fn_output_type"] == "cross_entropy"
    assert [o["logprobs"]["shape"] for o in out["loss_fn_outputs"]] == [[len(p)] for p in PROMPTS]
    assert all(k.count(":") == 1 for k in out["metrics"])


def test_retried_optim_step_is_applied_once(tiny: Api) -> None:
    sid = tiny.session()
    a, b = _create(tiny, sid, 0, seed=7), _create(tiny, sid, 1, seed=7)
    for model_id, retry in ((a, True), (b, False)):
        tiny.result("forward_backward", _fb(model_id, 1))
        first = tiny.ok("optim_step", _optim(model_id, 2))
        if retry:
            assert tiny.ok("optim_step", _optim(model_id, 2)) == first
            assert tiny.ok("forward_backward", _fb(model_id, 1))["request_id"] != first["request_id"]
        tiny.poll(first["request_id"])
    fa = _logprobs(tiny.result("forward", _fb(a, 3, "forward")))
    fb = _logprobs(tiny.result("forward", _fb(b, 3, "forward")))
    for x, y in zip(fa, fb, strict=True):
        np.testing.assert_array_equal(x, y)


def test_sampling(tiny: Api) -> None:
    sid = tiny.session()
    model_id = _create(tiny, sid, 0)
    eph = tiny.result("save_weights_for_sampler", {"model_id": model_id, "sampling_session_seq_id": 0, "seq_id": 1})
    assert eph["path"] is None
    sampler = eph["sampling_session_id"]
    body = {
        "num_samples": 3,
        "prompt": {"chunks": [{"tokens": PROMPTS[0]}]},
        "sampling_params": {"max_tokens": 6, "temperature": 0.7, "seed": 1},
        "sampling_session_id": sampler,
        "seq_id": 0,
        "prompt_logprobs": True,
        "topk_prompt_logprobs": 2,
    }
    out = tiny.result("asample", body, timeout=60)
    assert len(out["sequences"]) == 3
    for seq in out["sequences"]:
        assert len(seq["tokens"]) == len(seq["logprobs"]) <= 6
        assert seq["stop_reason"] in ("length", "stop")
    assert len(out["prompt_logprobs"]) == len(PROMPTS[0]) and out["prompt_logprobs"][0] is None
    assert all(len(pos) == 2 for pos in out["topk_prompt_logprobs"][1:])
    # Greedy with a stop token: the stop token ends the sequence and is included.
    greedy = {
        **body,
        "num_samples": 2,
        "sampling_params": {"max_tokens": 8, "temperature": 0.0},
        "prompt_logprobs": False,
        "topk_prompt_logprobs": 0,
    }
    first = tiny.result("asample", greedy)["sequences"]
    assert first[0]["tokens"] == first[1]["tokens"]
    stop_token = first[0]["tokens"][2]
    stopped = tiny.result(
        "asample", {**greedy, "sampling_params": {"max_tokens": 8, "temperature": 0.0, "stop": [stop_token]}}
    )
    seq = stopped["sequences"][0]
    assert seq["tokens"][-1] == stop_token and seq["stop_reason"] == "stop"
    # Base-model sampling.
    base = tiny.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 1, "base_model": TINY_MODEL, "model_path": None},
    )["sampling_session_id"]
    assert len(tiny.result("asample", {**greedy, "sampling_session_id": base})["sequences"]) == 2


def test_save_state_and_resume_exactly(tiny: Api) -> None:
    sid = tiny.session()
    model_id = _create(tiny, sid, 0)
    tiny.result("forward_backward", _fb(model_id, 1))
    tiny.result("optim_step", _optim(model_id, 2))
    path = tiny.result("save_weights", {"model_id": model_id, "path": "after-1", "seq_id": 3})["path"]
    assert path == f"tinker://{model_id}/weights/after-1"
    expected = _logprobs(tiny.result("forward", _fb(model_id, 4, "forward")))

    # create_training_client_from_state: weights_info → create_model(rank) → load_weights.
    info = tiny.ok("weights_info", {"tinker_path": path})
    assert info == {"base_model": TINY_MODEL, "is_lora": True, "lora_rank": 8}
    resumed = _create(tiny, sid, 1, rank=info["lora_rank"], seed=None)
    tiny.result("load_weights", {"model_id": resumed, "path": path, "optimizer": True, "seq_id": 1})
    got = _logprobs(tiny.result("forward", _fb(resumed, 2, "forward")))
    for x, y in zip(expected, got, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
    # With the optimizer state, the next steps match the original run's.
    originals: list[float] = []
    copies: list[float] = []
    for model_id_, out, seq0 in ((model_id, originals, 5), (resumed, copies, 3)):
        for k in range(2):
            out.append(tiny.result("forward_backward", _fb(model_id_, seq0 + 2 * k))["metrics"]["loss:sum"])
            tiny.result("optim_step", _optim(model_id_, seq0 + 2 * k + 1))
    np.testing.assert_allclose(originals, copies, rtol=1e-5)


def test_named_sampler_checkpoint_archive_and_tokenizer(tiny: Api, tmp_path: pathlib.Path) -> None:
    sid = tiny.session()
    model_id = _create(tiny, sid, 0)
    tiny.result("forward_backward", _fb(model_id, 1))
    tiny.result("optim_step", _optim(model_id, 2))
    path = tiny.result("save_weights_for_sampler", {"model_id": model_id, "path": "s1", "seq_id": 3})["path"]
    sampler = tiny.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 0, "base_model": None, "model_path": path},
    )["sampling_session_id"]
    eph = tiny.result("save_weights_for_sampler", {"model_id": model_id, "sampling_session_seq_id": 1, "seq_id": 4})
    greedy = {
        "num_samples": 1,
        "prompt": {"chunks": [{"tokens": PROMPTS[1]}]},
        "sampling_params": {"max_tokens": 5, "temperature": 0.0},
        "seq_id": 0,
    }
    from_ckpt = tiny.result("asample", {**greedy, "sampling_session_id": sampler})["sequences"][0]
    from_copy = tiny.result("asample", {**greedy, "sampling_session_id": eph["sampling_session_id"]})["sequences"][0]
    assert from_ckpt["tokens"] == from_copy["tokens"]
    np.testing.assert_allclose(from_ckpt["logprobs"], from_copy["logprobs"], atol=1e-5)

    redirect = tiny.get(f"training_runs/{model_id}/checkpoints/sampler_weights/s1/archive", follow_redirects=False)
    assert redirect.status_code == 302
    archive = tiny.client.get(redirect.headers["location"])
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        names = set(tar.getnames())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names

    files = tiny.ok("tokenizer_files", {"tokenizer_id": TINY_MODEL})["files"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer.decode(tokenizer.encode("hello world")) == "hello world"


def test_engine_user_errors(tiny: Api) -> None:
    model_id = _create(tiny, tiny.session(), 0)
    body = _fb(model_id, 1)
    body["forward_backward_input"]["loss_fn_config"] = {"no_such_key": 1.0}
    refused = tiny.post("forward_backward", body)  # found by the engine's checks at submit time
    assert refused.status_code == 400 and "no_such_key" in refused.json()["detail"]
    assert tiny.result("forward_backward", _fb(model_id, 1))["metrics"]["loss:sum"] > 0

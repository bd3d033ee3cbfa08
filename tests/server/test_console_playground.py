"""The console's playground with the real engine and the tiny model: the chat template,
stop strings, and sampling a run's checkpoint through the ordinary sampling path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from tinker_server.app import create_app
from tinker_server.engine import TINY_MODEL
from tinker_server.settings import Settings

from .conftest import Api, datum


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("console-tiny-home")
    client = TestClient(create_app(Settings(home=home, models=[TINY_MODEL], long_poll_s=1.0)))
    with client:
        yield Api(client, "tml-playground")


def _tokenizer(api: Api) -> object:
    info = api.runtime.scheduler.worker(TINY_MODEL).info
    assert info is not None
    return AutoTokenizer.from_pretrained(str(info.tokenizer_dir))


def _sample(api: Api, **body: object) -> dict:
    response = api.post("console/playground/sample", {"base_model": TINY_MODEL, "max_tokens": 16, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_prompt_becomes_a_chat_turn_when_the_model_has_a_template(tiny: Api) -> None:
    out = _sample(tiny, prompt="Hello there", temperature=0.0)
    tokenizer = _tokenizer(tiny)
    text = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": "Hello there"}], add_generation_prompt=True, tokenize=False
    )
    assert out["chat_template"] is True
    assert out["prompt_tokens"] == len(tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]
    assert 1 <= len(out["tokens"]) <= 16 and out["stop_reason"] in ("stop", "length")
    assert out["text"] == tokenizer.decode(out["tokens"], skip_special_tokens=True)  # type: ignore[attr-defined]
    plain = _sample(tiny, prompt="Hello there", chat=False, temperature=0.0)
    assert plain["chat_template"] is False
    assert plain["prompt_tokens"] == len(tokenizer.encode("Hello there"))  # type: ignore[attr-defined]


def test_a_stop_string_ends_the_answer(tiny: Api) -> None:
    greedy = _sample(tiny, prompt="The quick brown fox", chat=False, temperature=0.0)
    assert greedy["stop_reason"] == "length" and len(greedy["tokens"]) == 16
    tokenizer = _tokenizer(tiny)
    # A word-like piece of the greedy answer, after its start: sampling again stops at it (or earlier).
    pieces = [tokenizer.decode([t]) for t in greedy["tokens"]]  # type: ignore[attr-defined]
    k = next((i for i in range(2, len(pieces)) if pieces[i].strip().isalnum()), None)
    if k is None:
        pytest.skip("the greedy answer has no word-like piece to stop on")
    stopped = _sample(tiny, prompt="The quick brown fox", chat=False, temperature=0.0, stop=[pieces[k].strip()])
    assert stopped["stop_reason"] == "stop" and len(stopped["tokens"]) <= k + 1
    assert stopped["tokens"] == greedy["tokens"][: len(stopped["tokens"])]


def test_a_sampler_checkpoint_is_sampled_and_counted_on_its_run(tiny: Api) -> None:
    sid = tiny.session()
    body = {
        "session_id": sid,
        "model_seq_id": 0,
        "base_model": TINY_MODEL,
        "lora_config": {"rank": 4, "seed": 1},
    }
    run = tiny.result("create_model", body)["model_id"]
    fb = {
        "forward_backward_input": {"data": [datum([5, 17, 42, 99])], "loss_fn": "cross_entropy"},
        "model_id": run,
        "seq_id": 1,
    }
    tiny.result("forward_backward", fb)
    tiny.result("optim_step", {"adam_params": {"learning_rate": 0.01}, "model_id": run, "seq_id": 2})
    path = tiny.result("save_weights_for_sampler", {"model_id": run, "path": "final", "seq_id": 3})["path"]
    assert [c["tinker_path"] for c in tiny.get("console/playground/models").json()["checkpoints"]] == [path]
    first = _sample(tiny, model_path=path, prompt="Hi", max_tokens=4)
    second = _sample(tiny, model_path=path, prompt="Hi again", max_tokens=4)
    assert first["model_path"] == path and first["base_model"] == TINY_MODEL
    activity = tiny.get(f"console/runs/{run}").json()["sampling"]
    assert len(activity) == 1  # one playground sampler per model, reused
    assert activity[0]["requests"] == 2 and activity[0]["tokens"] == len(first["tokens"]) + len(second["tokens"])
    sessions = tiny.get("console/sessions").json()["sessions"]
    assert [s["display_name"] for s in sessions].count("console playground") == 1

"""Issue 2 "Bad input": each gets a typed error within seconds, naming the problem,
and the server keeps serving (the next valid call succeeds)."""

from __future__ import annotations

import time

import httpx
import pytest

import tinker
from tinker.types._base import to_wire

from .conftest import TINY_MODEL, Server, adam, datum, expect_error, token_batch

PROMPT = tinker.ModelInput.from_ints([5, 17, 42])


@pytest.fixture
def tc(sc: tinker.ServiceClient) -> tinker.TrainingClient:
    return sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=0)


def _still_trains(tc: tinker.TrainingClient) -> None:
    out = tc.forward_backward(token_batch(), "cross_entropy").result(timeout=30)
    assert out.metrics["loss:sum"] > 0
    tc.optim_step(adam()).result(timeout=30)


def test_unknown_base_model(sc: tinker.ServiceClient) -> None:
    expect_error(
        tinker.BadRequestError,
        lambda: sc.create_lora_training_client(base_model="no-such/model", rank=4),
        "no-such/model",
    )
    expect_error(tinker.BadRequestError, lambda: sc.create_sampling_client(base_model="no-such/model"), "no-such/model")
    assert sc.create_lora_training_client(base_model=TINY_MODEL, rank=4).model_id


@pytest.mark.parametrize("where", ["input", "target", "negative"])
def test_token_outside_vocabulary(tc: tinker.TrainingClient, where: str) -> None:
    tokens = {"input": [1, 2, 100_000, 4], "target": [1, 2, 3, 4, 512], "negative": [1, -2, 3, 4]}[where]
    bad = str(min(tokens) if where == "negative" else max(tokens))
    err = expect_error(
        (tinker.BadRequestError, tinker.RequestFailedError),
        lambda: tc.forward_backward([datum(tokens)], "cross_entropy").result(timeout=30),
        bad,
        "vocab",
    )
    if isinstance(err, tinker.RequestFailedError):
        assert err.category == "user"
    _still_trains(tc)


def test_token_outside_vocabulary_when_sampling(sc: tinker.ServiceClient) -> None:
    sampler = sc.create_sampling_client(base_model=TINY_MODEL)
    prompt = tinker.ModelInput.from_ints([1, 2, 3000])
    expect_error(
        (tinker.BadRequestError, tinker.RequestFailedError),
        lambda: sampler.sample(prompt, 1, tinker.SamplingParams(max_tokens=2)).result(timeout=30),
        "3000",
        "vocab",
    )
    assert len(sampler.sample(PROMPT, 1, tinker.SamplingParams(max_tokens=2)).result(timeout=30).sequences) == 1


def test_weights_length_differs_from_targets(tc: tinker.TrainingClient) -> None:
    bad = datum([1, 2, 3, 4], weights=[1.0, 1.0])
    expect_error(
        (tinker.BadRequestError, tinker.RequestFailedError),
        lambda: tc.forward_backward([bad], "cross_entropy").result(timeout=30),
        "weights",
    )
    expect_error(
        (tinker.BadRequestError, tinker.RequestFailedError),
        lambda: tc.forward([bad], "cross_entropy").result(timeout=30),
        "weights",
    )
    _still_trains(tc)


@pytest.mark.parametrize("max_tokens", [-1, -100])
def test_negative_max_tokens(sc: tinker.ServiceClient, max_tokens: int) -> None:
    sampler = sc.create_sampling_client(base_model=TINY_MODEL)
    expect_error(
        (tinker.BadRequestError, tinker.RequestFailedError),
        lambda: sampler.sample(PROMPT, 1, tinker.SamplingParams(max_tokens=max_tokens)).result(timeout=30),
        "max_tokens",
    )
    assert len(sampler.sample(PROMPT, 2, tinker.SamplingParams(max_tokens=3)).result(timeout=30).sequences) == 2


def test_unknown_loss_fn(tc: tinker.TrainingClient, server: Server, sc: tinker.ServiceClient) -> None:
    # Our SDK's types reject it before anything is sent (LossFnType is a Literal) ...
    expect_error(ValueError, lambda: tc.forward_backward(token_batch(), "no_such_loss"), "loss_fn")  # type: ignore[arg-type]
    # ... so the server is checked with a raw request, as another client could send it.
    body = {
        "model_id": tc.model_id,
        "seq_id": 1000,
        "forward_backward_input": {"data": [to_wire(token_batch()[0])], "loss_fn": "no_such_loss"},
    }
    start = time.monotonic()
    response = httpx.post(f"{server.url}/api/v1/forward_backward", json=body, headers=_auth(sc), timeout=10)
    assert time.monotonic() - start < 10
    assert response.status_code == 400, response.text
    assert "loss_fn" in response.text and "cross_entropy" in response.text
    malformed = httpx.post(
        f"{server.url}/api/v1/forward_backward",
        content=b"{not json",
        headers={**_auth(sc), "content-type": "application/json"},
        timeout=10,
    )
    assert malformed.status_code == 400 and "JSON" in malformed.text
    _still_trains(tc)


def _auth(sc: tinker.ServiceClient) -> dict[str, str]:
    return {"X-API-Key": sc.holder.http.api_key}


def test_model_path_without_tinker_scheme(sc: tinker.ServiceClient, tc: tinker.TrainingClient) -> None:
    path = f"{tc.model_id}/sampler_weights/x"
    expect_error(ValueError, lambda: sc.create_sampling_client(model_path=path), "tinker://")
    expect_error(ValueError, lambda: tc.create_sampling_client(path), "tinker://")
    expect_error(ValueError, lambda: sc.create_sampling_client(), "model_path")
    # A well-formed path to a checkpoint that does not exist is a 404, not a hang.
    expect_error(
        tinker.NotFoundError,
        lambda: sc.create_sampling_client(model_path=f"tinker://{tc.model_id}/sampler_weights/nope"),
        "nope",
    )
    assert (
        len(
            sc.create_sampling_client(base_model=TINY_MODEL)
            .sample(PROMPT, 1, tinker.SamplingParams(max_tokens=2))
            .result(timeout=30)
            .sequences
        )
        == 1
    )


def test_reused_seq_id_of_another_kind_is_rejected(
    server: Server, sc: tinker.ServiceClient, tc: tinker.TrainingClient
) -> None:
    """A layer-B retry re-sends the same request with the same seq_id (de-duplicated, fine); a forward
    that reuses the seq_id of an optim_step is a client bug and must not get the optim_step's result."""
    tc.forward_backward(token_batch(), "cross_entropy").result(timeout=30)  # seq_id 1
    tc.optim_step(adam()).result(timeout=30)  # seq_id 2
    body = {
        "model_id": tc.model_id,
        "seq_id": 2,
        "forward_input": {"data": [to_wire(d) for d in token_batch()], "loss_fn": "cross_entropy"},
    }
    response = httpx.post(f"{server.url}/api/v1/forward", json=body, headers=_auth(sc), timeout=10)
    assert response.status_code == 400, response.text
    assert "seq_id" in response.text

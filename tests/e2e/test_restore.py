"""Issue 3: restore exactness, and a downloaded sampler checkpoint loaded with stock ``peft``."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

import tinker

from .conftest import TINY_MODEL, adam, token_batch

DATA = token_batch()


def _train(tc: tinker.TrainingClient, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        fb, op = tc.forward_backward(DATA, "cross_entropy"), tc.optim_step(adam(0.01))
        out.append(fb.result(timeout=60).metrics["loss:sum"])
        op.result(timeout=60)
    return out


def _forward(tc: tinker.TrainingClient) -> list[np.ndarray]:
    out = tc.forward(DATA, "cross_entropy").result(timeout=60)
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def _assert_same(a: list[np.ndarray], b: list[np.ndarray], atol: float) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_training_client_from_state(connect: Callable[..., tinker.ServiceClient]) -> None:
    sc = connect()
    original = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=21)
    _train(original, 3)
    path = original.save_state("after-3").result(timeout=60).path
    expected = _forward(original)

    # Uninterrupted: the next 5 steps of the original run.
    continued = _train(original, 5)

    other = connect()  # a new session, as after a restart of the user's script
    weights_only = other.create_training_client_from_state(path, user_metadata={"resumed": "yes"})
    assert weights_only.model_id != original.model_id
    assert weights_only.get_info().lora_rank == 4
    _assert_same(_forward(weights_only), expected, 1e-6)

    with_optimizer = other.create_training_client_from_state_with_optimizer(path)
    _assert_same(_forward(with_optimizer), expected, 1e-6)
    np.testing.assert_allclose(_train(with_optimizer, 5), continued, rtol=1e-5, atol=1e-5)

    # Weights only: Adam starts over, so training diverges from the original run after the first step.
    fresh = _train(weights_only, 2)
    assert fresh[0] == pytest.approx(continued[0], rel=1e-5)
    assert abs(fresh[1] - continued[1]) > 1e-4

    rest = other.create_rest_client()
    run = rest.get_training_run(str(with_optimizer.model_id)).result(timeout=30)
    assert run.lora_rank == 4 and run.base_model == TINY_MODEL
    assert rest.get_training_run(str(weights_only.model_id)).result(timeout=30).user_metadata == {"resumed": "yes"}

    async def twins() -> None:
        a = await other.create_training_client_from_state_async(path)
        b = await other.create_training_client_from_state_with_optimizer_async(path)
        for tc in (a, b):
            fut = await tc.forward_async(DATA, "cross_entropy")
            _assert_same([o["logprobs"].to_numpy() for o in (await fut).loss_fn_outputs], expected, 1e-6)
        first = await (await b.forward_backward_async(DATA, "cross_entropy"))
        await (await b.optim_step_async(adam(0.01)))
        second = await (await b.forward_backward_async(DATA, "cross_entropy"))
        np.testing.assert_allclose([first.metrics["loss:sum"], second.metrics["loss:sum"]], continued[:2], rtol=1e-5)

    asyncio.run(twins())


def test_load_state_into_an_existing_client(sc: tinker.ServiceClient) -> None:
    source = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=3)
    _train(source, 2)
    path = source.save_state("two").result(timeout=60).path
    expected = _forward(source)
    continued = _train(source, 3)

    target = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=99)
    _train(target, 1)  # its own state is overwritten by the load
    target.load_state_with_optimizer(path).result(timeout=60)
    _assert_same(_forward(target), expected, 1e-6)
    np.testing.assert_allclose(_train(target, 3), continued, rtol=1e-5, atol=1e-5)

    target.load_state(path).result(timeout=60)
    _assert_same(_forward(target), expected, 1e-6)

    wrong_rank = sc.create_lora_training_client(base_model=TINY_MODEL, rank=2)
    with pytest.raises((tinker.BadRequestError, tinker.RequestFailedError)) as info:
        wrong_rank.load_state(path).result(timeout=30)
    assert "rank" in str(info.value)
    # A sampler checkpoint has no optimizer state.
    sampler_path = source.save_weights_for_sampler("s").result(timeout=60).path
    with pytest.raises((tinker.BadRequestError, tinker.RequestFailedError)) as info:
        target.load_state_with_optimizer(sampler_path).result(timeout=30)
    assert "optimizer" in str(info.value) or "sampler" in str(info.value)
    assert target.forward(DATA, "cross_entropy").result(timeout=30).metrics["loss:sum"] > 0


# peft 0.21 reads a transformers attribute that transformers 5 deprecates (third-party warning).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_sampler_checkpoint_loads_with_peft(sc: tinker.ServiceClient, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from tinker_server.engine.tiny import build_tiny_model

    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=8)
    _train(tc, 3)  # B != 0, so the adapter changes the logits
    path = tc.save_weights_for_sampler("for-peft").result(timeout=60).path
    url = sc.create_rest_client().get_checkpoint_archive_url_from_tinker_path(path).result(timeout=30).url
    archive = httpx.get(url, timeout=30)
    assert archive.status_code == 200
    target = tmp_path / "adapter"
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(target, filter="data")
    assert (target / "adapter_config.json").exists() and (target / "adapter_model.safetensors").exists()

    prompt = [5, 17, 42, 99, 7, 3, 250, 11, 400]
    ours = (
        sc.create_sampling_client(model_path=path)
        .compute_logprobs(tinker.ModelInput.from_ints(prompt))
        .result(timeout=60)
    )
    assert ours[0] is None and len(ours) == len(prompt)

    base = build_tiny_model()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        plain = torch.log_softmax(base(ids).logits.float(), dim=-1)
        model = peft.PeftModel.from_pretrained(base, str(target))
        model.eval()
        logits = model(input_ids=ids).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    reference = [float(logprobs[0, i - 1, prompt[i]]) for i in range(1, len(prompt))]
    np.testing.assert_allclose(np.array(ours[1:], dtype=float), reference, atol=1e-4)
    plain_lp = [float(plain[0, i - 1, prompt[i]]) for i in range(1, len(prompt))]
    assert np.max(np.abs(np.array(plain_lp) - np.array(reference))) > 1e-3  # the adapter mattered

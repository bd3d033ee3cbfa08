"""Issue 2 end to end: our SDK → HTTP → the real server app → the real engine (tiny model)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import tinker

from .conftest import TINY_MODEL, adam, datum, token_batch

PROMPT = tinker.ModelInput.from_ints([5, 17, 42, 99, 7, 3])


def _losses_pipelined(tc: tinker.TrainingClient, data: list[tinker.Datum], steps: int) -> list[float]:
    futures = []
    for _ in range(steps):  # every submission goes out before any result is awaited
        futures.append((tc.forward_backward(data, "cross_entropy"), tc.optim_step(adam())))
    out = []
    for step, (fb, op) in enumerate(futures, start=1):
        out.append(fb.result(timeout=60).metrics["loss:sum"])
        assert (op.result(timeout=60).metrics or {})["step:max"] == step
    return out


def _losses_sequential(tc: tinker.TrainingClient, data: list[tinker.Datum], steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(tc.forward_backward(data, "cross_entropy").result(timeout=60).metrics["loss:sum"])
        tc.optim_step(adam()).result(timeout=60)
    return out


def test_capabilities_list_the_tiny_model(sc: tinker.ServiceClient) -> None:
    names = [m.model_name for m in sc.get_server_capabilities().supported_models]
    assert TINY_MODEL in names


def test_info_tokenizer_training_and_sampling(
    sc: tinker.ServiceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "tinker-cache"
    monkeypatch.setenv("TINKER_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=8, seed=1)

    info = tc.get_info()
    assert info.model_id == tc.model_id
    assert info.model_data.tokenizer_id and info.lora_rank == 8 and info.is_lora

    tokenizer = tc.get_tokenizer()
    assert tc.get_tokenizer() is tokenizer  # cached per client
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text)
    assert all(0 <= t < 512 for t in ids)
    assert tokenizer.decode(ids) == text
    assert any(cache.rglob("tokenizer*.json")), "the tokenizer files were not cached under TINKER_CACHE_DIR"

    data = [datum(tokenizer.encode(s)) for s in (text, "Hello, world! How are you today?")]
    losses = _losses_sequential(tc, data, 6)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses

    fwd = tc.forward(data, "cross_entropy").result(timeout=60)
    assert fwd.loss_fn_output_type == "cross_entropy"
    assert [o["logprobs"].shape or [len(o["logprobs"].data)] for o in fwd.loss_fn_outputs] == [
        [d.model_input.length] for d in data
    ]
    assert fwd.metrics["loss:sum"] == pytest.approx(
        -sum(float(np.sum(o["logprobs"].to_numpy())) for o in fwd.loss_fn_outputs), rel=1e-4
    )
    assert fwd.metrics["loss:sum"] < 0.7 * losses[0]

    sampler = tc.save_weights_and_get_sampling_client(name="ignored")
    prompt = tinker.ModelInput.from_ints(tokenizer.encode("The quick"))
    many = sampler.sample(
        prompt, num_samples=3, sampling_params=tinker.SamplingParams(max_tokens=6, temperature=1.0, seed=3)
    ).result(timeout=60)
    assert len(many.sequences) == 3
    for seq in many.sequences:
        assert 1 <= len(seq.tokens) <= 6
        assert seq.logprobs is not None and len(seq.logprobs) == len(seq.tokens)
        assert all(lp <= 0.0 for lp in seq.logprobs)
        assert seq.stop_reason in ("length", "stop")

    greedy = tinker.SamplingParams(max_tokens=12, temperature=0.0)
    plain = sampler.sample(prompt, num_samples=2, sampling_params=greedy).result(timeout=60).sequences
    assert plain[0].tokens == plain[1].tokens  # temperature 0 is greedy
    assert len(plain[0].tokens) == 12 and plain[0].stop_reason == "length"

    # A stop string taken from the greedy output: the output ends at (and includes) it.
    stop = tokenizer.decode(plain[0].tokens[2:3])
    assert stop
    stopped = (
        sampler.sample(
            prompt, num_samples=1, sampling_params=tinker.SamplingParams(max_tokens=12, temperature=0.0, stop=[stop])
        )
        .result(timeout=60)
        .sequences[0]
    )
    assert stopped.stop_reason == "stop"
    assert tokenizer.decode(stopped.tokens).endswith(stop)
    assert 1 <= len(stopped.tokens) <= 3
    assert stopped.tokens == plain[0].tokens[: len(stopped.tokens)]

    newline = (
        sampler.sample(
            prompt, num_samples=1, sampling_params=tinker.SamplingParams(max_tokens=12, temperature=0.0, stop=["\n"])
        )
        .result(timeout=60)
        .sequences[0]
    )
    decoded = tokenizer.decode(newline.tokens)
    if newline.stop_reason == "stop":
        assert decoded.endswith("\n") and "\n" not in decoded[:-1]
    else:
        assert "\n" not in decoded and len(newline.tokens) == 12


def test_pipelined_submissions_run_in_order(connect: Callable[..., tinker.ServiceClient]) -> None:
    sc = connect()
    data = token_batch()
    pipelined = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=11)
    sequential = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=11)
    a = _losses_pipelined(pipelined, data, 5)
    b = _losses_sequential(sequential, data, 5)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert a[-1] < a[0]
    # Both adapters end in the same state.
    fa = pipelined.forward(data, "cross_entropy").result(timeout=60)
    fb = sequential.forward(data, "cross_entropy").result(timeout=60)
    for x, y in zip(fa.loss_fn_outputs, fb.loss_fn_outputs, strict=True):
        np.testing.assert_allclose(x["logprobs"].to_numpy(), y["logprobs"].to_numpy(), atol=1e-6)


def test_gradients_accumulate_until_optim_step(sc: tinker.ServiceClient) -> None:
    """Two forward_backward halves then one step == one forward_backward of the whole batch."""
    data = token_batch()
    split = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=5)
    whole = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=5)
    for _ in range(2):
        first, second = (
            split.forward_backward(data[:1], "cross_entropy"),
            split.forward_backward(data[1:], "cross_entropy"),
        )
        step = split.optim_step(adam())
        total = first.result(timeout=60).metrics["loss:sum"] + second.result(timeout=60).metrics["loss:sum"]
        step.result(timeout=60)
        assert whole.forward_backward(data, "cross_entropy").result(timeout=60).metrics["loss:sum"] == pytest.approx(
            total, rel=1e-5
        )
        whole.optim_step(adam()).result(timeout=60)


def test_named_sampler_checkpoint_and_create_sampling_client(sc: tinker.ServiceClient) -> None:
    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=2)
    _losses_sequential(tc, token_batch(), 2)
    saved = tc.save_weights_for_sampler("step-2").result(timeout=60)
    assert saved.path == f"tinker://{tc.model_id}/sampler_weights/step-2"
    greedy = tinker.SamplingParams(max_tokens=8, temperature=0.0)
    ephemeral = tc.save_weights_and_get_sampling_client()
    expected = ephemeral.sample(PROMPT, 1, greedy).result(timeout=60).sequences[0]
    for sampler in (sc.create_sampling_client(model_path=saved.path), tc.create_sampling_client(saved.path)):
        got = sampler.sample(PROMPT, 1, greedy).result(timeout=60).sequences[0]
        assert got.tokens == expected.tokens
        np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(expected.logprobs), atol=1e-5)
    # The untrained base model samples something else (the adapter matters).
    base = sc.create_sampling_client(base_model=TINY_MODEL).sample(PROMPT, 1, greedy).result(timeout=60).sequences[0]
    logprobs = sc.create_sampling_client(base_model=TINY_MODEL).compute_logprobs(PROMPT).result(timeout=60)
    assert len(logprobs) == PROMPT.length and logprobs[0] is None
    assert (base.tokens, base.logprobs) != (expected.tokens, expected.logprobs)


def test_async_twins_match_sync(connect: Callable[..., tinker.ServiceClient]) -> None:
    sc = connect()
    data = token_batch()
    sync_tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=9)
    sync_losses = _losses_sequential(sync_tc, data, 3)
    sync_fwd = sync_tc.forward(data, "cross_entropy").result(timeout=60)
    sync_sampler = sync_tc.save_weights_and_get_sampling_client()
    greedy = tinker.SamplingParams(max_tokens=6, temperature=0.0)
    sync_sample = sync_sampler.sample(PROMPT, 2, greedy).result(timeout=60)
    sync_lp = sync_sampler.compute_logprobs(PROMPT).result(timeout=60)

    async def main() -> None:
        caps = await sc.get_server_capabilities_async()
        assert TINY_MODEL in [m.model_name for m in caps.supported_models]
        tc = await sc.create_lora_training_client_async(base_model=TINY_MODEL, rank=4, seed=9)
        info = await tc.get_info_async()
        assert info.model_id == tc.model_id and info.lora_rank == 4
        losses = []
        for _ in range(3):
            fb = await tc.forward_backward_async(data, "cross_entropy")
            op = await tc.optim_step_async(adam())
            losses.append((await fb).metrics["loss:sum"])
            await op.result_async(timeout=60)
        np.testing.assert_allclose(losses, sync_losses, rtol=1e-6)
        fwd = await (await tc.forward_async(data, "cross_entropy"))
        for x, y in zip(fwd.loss_fn_outputs, sync_fwd.loss_fn_outputs, strict=True):
            np.testing.assert_allclose(x["logprobs"].to_numpy(), y["logprobs"].to_numpy(), atol=1e-6)

        sampler = await tc.save_weights_and_get_sampling_client_async()
        got = await sampler.sample_async(PROMPT, 2, greedy)
        assert [s.tokens for s in got.sequences] == [s.tokens for s in sync_sample.sequences]
        lp = await sampler.compute_logprobs_async(PROMPT)
        np.testing.assert_allclose(np.array(lp[1:], dtype=float), np.array(sync_lp[1:], dtype=float), atol=1e-5)

        saved = await (await tc.save_weights_for_sampler_async("async-w"))
        assert saved.path.endswith("/sampler_weights/async-w")
        for named in (
            await sc.create_sampling_client_async(model_path=saved.path),
            await tc.create_sampling_client_async(saved.path),
            await tinker.SamplingClient.create(sc.holder, model_path=saved.path),
        ):
            again = await named.sample_async(PROMPT, 1, greedy)
            assert again.sequences[0].tokens == sync_sample.sequences[0].tokens
        submitted = await tc.save_weights_and_get_sampling_client_submit()
        assert (await submitted.sample_async(PROMPT, 1, greedy)).sequences[0].tokens == sync_sample.sequences[0].tokens

        state = await (await tc.save_state_async("async-s"))
        assert state.path == f"tinker://{tc.model_id}/weights/async-s"
        await (await tc.load_state_async(state.path))
        await (await tc.load_state_with_optimizer_async(state.path))

    asyncio.run(main())

"""Sampling: logprobs, temperature, greedy and seeded determinism, stops, filters, batching."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tinker_server.engine import (
    TINY_MODEL,
    AdapterNotFound,
    Engine,
    LoraSpec,
    SampleJob,
    SampleOutput,
    TrainDatum,
    load_engine,
)

from .conftest import MergedReference, floats, ok, randomize_adapter

PROMPT = [1, 87, 85, 269, 201, 426, 468, 264]


@pytest.fixture
def tuned(engine: Engine) -> Engine:
    """The engine with adapter 'a' holding random non-zero weights."""
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    randomize_adapter(engine, "a", seed=2, scale=0.2)
    return engine


def _one(engine: Engine, job: SampleJob) -> SampleOutput:
    out = engine.sample([job])[0]
    assert isinstance(out, SampleOutput), out
    return out


def _teacher_forced(engine: Engine, adapter_id: str, prompt: list[int], gen: list[int]) -> np.ndarray:
    seq = prompt + gen
    datum = TrainDatum(tokens=seq[:-1], loss_fn_inputs={"target_tokens": np.array(seq[1:])})
    lp = engine.forward_backward(adapter_id, [datum], "cross_entropy", None, backward=False).loss_fn_outputs[0]
    return lp["logprobs"][len(prompt) - 1 :]


def test_sampled_logprobs_match_a_teacher_forced_forward(tuned: Engine) -> None:
    out = _one(tuned, SampleJob("a", PROMPT, num_samples=3, max_tokens=12, seed=5))
    assert len(out.sequences) == 3
    for seq in out.sequences:
        assert len(seq.tokens) == len(seq.logprobs) == 12 and seq.stop_reason == "length"
        np.testing.assert_allclose(seq.logprobs, _teacher_forced(tuned, "a", PROMPT, seq.tokens), atol=1e-4)
    assert out.prompt_logprobs is None and out.topk_prompt_logprobs is None


def test_temperature_scales_the_reported_logprobs(tuned: Engine) -> None:
    ref = MergedReference(tuned, "a")
    for temperature in (0.5, 2.0):
        seq = _one(tuned, SampleJob("a", PROMPT, max_tokens=6, temperature=temperature, seed=1)).sequences[0]
        logits = ref.logits(PROMPT + seq.tokens)[len(PROMPT) - 1 : -1].detach()
        expected = torch.log_softmax(logits / temperature, dim=-1).gather(1, torch.tensor(seq.tokens)[:, None])[:, 0]
        np.testing.assert_allclose(seq.logprobs, expected.numpy(), atol=1e-4)


def test_greedy_is_deterministic_and_takes_the_argmax(tuned: Engine) -> None:
    job = SampleJob("a", PROMPT, num_samples=2, max_tokens=10, temperature=0.0)
    first, second = _one(tuned, job), _one(tuned, job)
    assert first.sequences[0].tokens == first.sequences[1].tokens == second.sequences[0].tokens
    seq = first.sequences[0]
    logits = MergedReference(tuned, "a").logits(PROMPT + seq.tokens)[len(PROMPT) - 1 : -1].detach()
    assert seq.tokens == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq.tokens)[:, None])[:, 0]  # T=0 reports T=1
    np.testing.assert_allclose(seq.logprobs, expected.numpy(), atol=1e-4)


def test_seed_determinism_and_distinct_samples(tuned: Engine) -> None:
    job = SampleJob("a", PROMPT, num_samples=4, max_tokens=8, seed=123)
    a, b = _one(tuned, job), _one(tuned, job)
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert len({tuple(s.tokens) for s in a.sequences}) == 4
    other = _one(tuned, SampleJob("a", PROMPT, num_samples=4, max_tokens=8, seed=124))
    assert [s.tokens for s in other.sequences] != [s.tokens for s in a.sequences]
    unseeded = [_one(tuned, SampleJob("a", PROMPT, max_tokens=8)).sequences[0].tokens for _ in range(2)]
    assert unseeded[0] != unseeded[1]


def test_stop_string_spanning_several_tokens(tuned: Engine) -> None:
    tok = tuned.tokenizer
    base = _one(tuned, SampleJob("a", PROMPT, max_tokens=30, seed=7)).sequences[0].tokens
    # a stop string made of the text of two consecutive generated tokens (ASCII, so byte-exact)
    for i in range(3, len(base) - 1):
        stop = tok.decode(base[i : i + 2])
        assert isinstance(stop, str)
        if stop.isascii() and len(tok.decode(base[i : i + 1])) >= 1 and len(stop) >= 2 and stop.strip():
            break
    else:
        pytest.skip("no ASCII token pair in this sample")
    expected_len = next(k for k in range(1, len(base) + 1) if stop in tok.decode(base[:k]))
    out = _one(tuned, SampleJob("a", PROMPT, max_tokens=30, seed=7, stop_strings=[stop])).sequences[0]
    assert out.stop_reason == "stop"
    assert out.tokens == base[:expected_len]  # the stop text's tokens are included
    assert stop in tok.decode(out.tokens) and stop not in tok.decode(out.tokens[:-1])


def test_stop_token_ids_are_included(tuned: Engine) -> None:
    base = _one(tuned, SampleJob("a", PROMPT, max_tokens=20, seed=9)).sequences[0].tokens
    stop_id = base[4]
    out = _one(tuned, SampleJob("a", PROMPT, max_tokens=20, seed=9, stop_token_ids=[stop_id])).sequences[0]
    assert out.stop_reason == "stop" and out.tokens == base[: base.index(stop_id) + 1]
    assert len(out.logprobs) == len(out.tokens)


def test_eos_does_not_stop_unless_asked(tuned: Engine) -> None:
    eos = tuned.tokenizer.eos_token_id
    for seed in range(40):  # find a seeded sample that emits EOS before its last token
        job = SampleJob("a", PROMPT, num_samples=8, max_tokens=30, seed=seed)
        seqs = _one(tuned, job).sequences
        hits = [i for i, s in enumerate(seqs) if eos in s.tokens[:-1]]
        if hits:
            break
    assert hits, "no sample emitted EOS"
    assert all(len(seqs[i].tokens) == 30 and seqs[i].stop_reason == "length" for i in hits)
    job.stop_token_ids = [eos]
    stopped = _one(tuned, job).sequences
    for i in hits:
        assert stopped[i].stop_reason == "stop" and stopped[i].tokens[-1] == eos
        assert stopped[i].tokens == seqs[i].tokens[: seqs[i].tokens.index(eos) + 1]


@pytest.mark.parametrize("top_k", [1, 5, 40])
def test_top_k_never_emits_a_token_outside_the_top_k(tuned: Engine, top_k: int) -> None:
    out = _one(tuned, SampleJob("a", PROMPT, num_samples=4, max_tokens=10, seed=top_k, top_k=top_k, temperature=1.5))
    ref = MergedReference(tuned, "a")
    for seq in out.sequences:
        logits = ref.logits(PROMPT + seq.tokens)[len(PROMPT) - 1 : -1].detach()
        ranks = (logits > logits.gather(1, torch.tensor(seq.tokens)[:, None])).sum(-1)
        assert int(ranks.max()) < top_k


@pytest.mark.parametrize("top_p", [0.05, 0.3])
def test_top_p_never_emits_a_token_outside_the_nucleus(tuned: Engine, top_p: float) -> None:
    out = _one(tuned, SampleJob("a", PROMPT, num_samples=4, max_tokens=10, seed=11, top_p=top_p, temperature=0.7))
    ref = MergedReference(tuned, "a")
    for seq in out.sequences:
        probs = torch.softmax(ref.logits(PROMPT + seq.tokens)[len(PROMPT) - 1 : -1].detach() / 0.7, dim=-1)
        chosen = probs.gather(1, torch.tensor(seq.tokens)[:, None])
        mass_ahead = (probs * (probs > chosen)).sum(-1)  # probability of strictly more likely tokens
        assert bool((mass_ahead < top_p + 1e-5).all())


def test_batched_multi_adapter_sampling_equals_each_alone(home, tuned: Engine) -> None:
    tuned.create_adapter("b", LoraSpec(rank=2, seed=5, train_mlp=False))
    randomize_adapter(tuned, "b", seed=6, scale=0.3)
    jobs = [
        SampleJob("a", PROMPT, num_samples=2, max_tokens=9, seed=1),
        SampleJob("b", PROMPT[:3], num_samples=3, max_tokens=5, seed=2, top_k=20),
        SampleJob(None, PROMPT[2:], max_tokens=12, seed=3, temperature=0.0, prompt_logprobs=True),
        SampleJob("a", [5, 6], max_tokens=7, seed=4, top_p=0.5, stop_token_ids=[1]),
    ]
    together = tuned.sample(jobs)
    for job, out in zip(jobs, together, strict=False):
        alone = _one(tuned, job)
        assert isinstance(out, SampleOutput)
        for x, y in zip(out.sequences, alone.sequences, strict=False):
            assert x.tokens == y.tokens and x.stop_reason == y.stop_reason
            np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-5)
        if job.prompt_logprobs:
            assert out.prompt_logprobs is not None and alone.prompt_logprobs is not None
            np.testing.assert_allclose(floats(out.prompt_logprobs[1:]), floats(alone.prompt_logprobs[1:]), atol=1e-6)
    assert [len(ok(o).sequences) for o in together] == [2, 3, 1, 1]


def test_base_model_rows_ignore_adapters(tuned: Engine) -> None:
    tuned.create_adapter("fresh", LoraSpec(rank=2, seed=0))  # B = 0: same as the base model
    jobs = [SampleJob(None, PROMPT, max_tokens=6, seed=1), SampleJob("a", PROMPT, max_tokens=6, seed=1)]
    base, adapted = map(ok, tuned.sample(jobs))
    fresh = _one(tuned, SampleJob("fresh", PROMPT, max_tokens=6, seed=1))
    assert base.sequences[0].tokens == fresh.sequences[0].tokens
    np.testing.assert_allclose(base.sequences[0].logprobs, fresh.sequences[0].logprobs, atol=1e-6)
    assert adapted.sequences[0].logprobs != base.sequences[0].logprobs


def test_prompt_logprobs_and_topk(tuned: Engine) -> None:
    out = _one(tuned, SampleJob("a", PROMPT, max_tokens=1, prompt_logprobs=True, topk_prompt_logprobs=3))
    assert out.prompt_logprobs is not None and out.topk_prompt_logprobs is not None
    assert out.prompt_logprobs[0] is None and out.topk_prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(out.topk_prompt_logprobs) == len(PROMPT)
    np.testing.assert_allclose(
        floats(out.prompt_logprobs[1:]), _teacher_forced(tuned, "a", PROMPT[:1], PROMPT[1:]), atol=1e-5
    )
    logp = torch.log_softmax(MergedReference(tuned, "a").logits(PROMPT)[:-1].detach(), dim=-1)
    for pos, pairs in enumerate(out.topk_prompt_logprobs[1:]):
        assert pairs is not None
        assert [t for t, _ in pairs] == torch.topk(logp[pos], 3).indices.tolist()
        np.testing.assert_allclose([v for _, v in pairs], torch.topk(logp[pos], 3).values.numpy(), atol=1e-4)
    only_topk = _one(tuned, SampleJob("a", PROMPT, max_tokens=1, topk_prompt_logprobs=2))
    assert only_topk.prompt_logprobs is None
    assert only_topk.topk_prompt_logprobs is not None and len(only_topk.topk_prompt_logprobs) == len(PROMPT)


def test_max_tokens_zero_and_unset(tuned: Engine) -> None:
    out = _one(tuned, SampleJob("a", PROMPT, max_tokens=0, prompt_logprobs=True))
    assert out.sequences[0].tokens == [] and out.sequences[0].stop_reason == "length"
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == len(PROMPT)
    long_prompt = (PROMPT * 300)[: tuned.info.max_context - 3]
    out = _one(tuned, SampleJob("a", long_prompt, seed=1))  # max_tokens=None: up to the context limit
    assert len(out.sequences[0].tokens) == 3 and out.sequences[0].stop_reason == "length"


def test_unknown_adapter_fails_only_its_job(tuned: Engine) -> None:
    good, bad = tuned.sample([SampleJob("a", PROMPT, max_tokens=2, seed=1), SampleJob("nope", PROMPT, max_tokens=2)])
    assert isinstance(good, SampleOutput) and isinstance(bad, AdapterNotFound)


def test_bfloat16_engine_samples_and_trains(home) -> None:
    engine = load_engine(TINY_MODEL, home=home, dtype="bfloat16")
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    out = _one(engine, SampleJob("a", PROMPT, num_samples=2, max_tokens=5, seed=1))
    assert all(len(s.tokens) == 5 for s in out.sequences)
    datum = TrainDatum(tokens=PROMPT[:-1], loss_fn_inputs={"target_tokens": np.array(PROMPT[1:])})
    fb = engine.forward_backward("a", [datum], "cross_entropy", None, backward=True)
    assert np.isfinite(fb.metrics["loss:sum"])
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in engine._adapters["a"].parameters())


def test_a_small_kv_budget_splits_batches_without_changing_results(tuned: Engine) -> None:
    from tinker_server.engine import sampling

    jobs = [
        SampleJob("a", PROMPT, num_samples=5, max_tokens=6, seed=1, prompt_logprobs=True),
        SampleJob(None, PROMPT[:4], num_samples=2, max_tokens=3, seed=2),
    ]
    prepared = [
        sampling.prepare_job(j, tuned._adapters.get(j.adapter_id or ""), vocab_size=512, max_context=2048) for j in jobs
    ]
    whole = sampling.run_jobs(tuned._parts, tuned.tokenizer, prepared)
    per_token = sampling.kv_bytes_per_token(tuned._parts)
    split = sampling.run_jobs(tuned._parts, tuned.tokenizer, prepared, max_kv_bytes=per_token * 30)
    for x, y in zip(whole, split, strict=False):
        assert [s.tokens for s in x.sequences] == [s.tokens for s in y.sequences]
        assert x.prompt_logprobs == y.prompt_logprobs
    assert [len(o.sequences) for o in split] == [5, 2]


def test_in_place_kv_cache_equals_hf_dynamic_cache(tuned: Engine, monkeypatch) -> None:
    """Our cache layers (append into reserved room, rows dropped as they finish) give the
    same tokens and logprobs as HF's concatenating DynamicCache."""
    from transformers import DynamicCache

    from tinker_server.engine import sampling

    jobs = [
        SampleJob("a", PROMPT, num_samples=3, max_tokens=9, seed=1, stop_token_ids=[85, 201]),
        SampleJob(None, PROMPT[:3], max_tokens=4, seed=2, temperature=0.0),
        SampleJob("a", [5, 6], max_tokens=12, seed=3, top_k=5),
    ]
    ours = tuned.sample(jobs)
    assert all(isinstance(layer, sampling._layer_class()) for layer in sampling._new_cache(tuned._parts, 4).layers)
    monkeypatch.setattr(sampling, "_new_cache", lambda parts, room: DynamicCache(config=parts.model.config))
    reference = tuned.sample(jobs)
    for x, y in zip(ours, reference, strict=False):
        assert isinstance(x, SampleOutput) and isinstance(y, SampleOutput)
        for sx, sy in zip(x.sequences, y.sequences, strict=False):
            assert sx.tokens == sy.tokens and sx.stop_reason == sy.stop_reason
            np.testing.assert_allclose(sx.logprobs, sy.logprobs, rtol=1e-6, atol=1e-6)


def test_kv_cache_room_is_bounded_and_grows(tuned: Engine) -> None:
    """Spare room never exceeds the batch's max_tokens; long generations regrow it."""
    from tinker_server.engine import sampling

    cache = sampling._new_cache(tuned._parts, room=3)
    layer: Any = cache.layers[0]  # the in-place layer class is made at run time (sampling._layer_class)
    keys = torch.randn(2, 1, 10, 4)
    layer.update(keys, keys + 1)
    assert layer.key_buffer.shape[2] == 13 and layer.get_seq_length() == 10
    for step in range(5):  # past the reserved room: the buffer grows, content is kept
        layer.update(torch.full((2, 1, 1, 4), float(step)), torch.zeros(2, 1, 1, 4))
    assert layer.get_seq_length() == 15 and layer.key_buffer.shape[2] >= 15
    torch.testing.assert_close(layer.keys[:, :, :10], keys)
    assert layer.keys[:, :, 10:, 0].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] * 2
    layer.select_rows(torch.tensor([1]))
    assert layer.keys.shape == (1, 1, 15, 4)
    big: Any = sampling._new_cache(tuned._parts, room=10_000).layers[0]
    big.update(keys, keys)
    assert big.key_buffer.shape[2] == 10 + 64  # not 10 + 10_000


# -- extra outputs: top-k sampled logprobs, prompt_logprobs_last_n, target / alternative prompt tokens --


def _reference_prompt_logp(engine: Engine, adapter_id: str, prompt: list[int]) -> torch.Tensor:
    """(P - 1, V) log p(. | prompt[:i + 1]) from a plain teacher-forced forward at T = 1."""
    return torch.log_softmax(MergedReference(engine, adapter_id).logits(prompt)[:-1].detach(), dim=-1)


@pytest.mark.parametrize(("temperature", "top_k"), [(0.7, 5), (0.0, -1), (1.0, -1)])
def test_topk_sample_logprobs_match_a_plain_forward(tuned: Engine, temperature: float, top_k: int) -> None:
    out = _one(
        tuned,
        SampleJob(
            "a",
            PROMPT,
            num_samples=2,
            max_tokens=7,
            seed=3,
            temperature=temperature,
            top_k=top_k,
            topk_sample_logprobs=4,
        ),
    )
    ref = MergedReference(tuned, "a")
    for seq in out.sequences:
        assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == len(seq.tokens) == 7
        logits = ref.logits(PROMPT + seq.tokens)[len(PROMPT) - 1 : -1].detach()
        logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)  # same distribution as seq.logprobs
        best = torch.topk(logp, 4, dim=-1)
        for step, pairs in enumerate(seq.topk_logprobs):
            assert [t for t, _ in pairs] == best.indices[step].tolist()
            # Decoding through the KV cache and the teacher-forced forward round differently in
            # float32 (~1e-4 after dividing by T here, packed weights or not), as for seq.logprobs.
            np.testing.assert_allclose([v for _, v in pairs], best.values[step].numpy(), rtol=0, atol=3e-4)
            # the reported logprob of the sampled token is read from the very same distribution
            listed = dict(pairs)
            if seq.tokens[step] in listed:
                assert listed[seq.tokens[step]] == seq.logprobs[step]
    assert out.target_prompt_logprobs is None and out.prompt_alt_tokens is None


def test_new_options_off_leave_sampling_unchanged(tuned: Engine) -> None:
    """The extra outputs only read what sampling computes: tokens and logprobs are bit-identical
    with every option on or off, and nothing extra is returned when they are off."""
    jobs = [
        SampleJob("a", PROMPT, num_samples=3, max_tokens=9, seed=1, top_p=0.8, temperature=0.9),
        SampleJob(None, PROMPT[:5], max_tokens=6, seed=2, temperature=0.0, stop_token_ids=[85]),
        SampleJob("a", [5, 6], max_tokens=8, seed=4, top_k=7),
    ]
    plain = tuned.sample(jobs)
    extras = dict(
        topk_sample_logprobs=3,
        prompt_alt_tokens_k=2,
        prompt_logprobs=True,
        prompt_logprobs_last_n=2,
        topk_prompt_logprobs=2,
    )
    rich = tuned.sample(
        [
            SampleJob(
                **{
                    **vars(job),
                    **extras,
                    "target_prompt_logprobs": np.full((len(job.prompt) - 1, 2), 7, dtype=np.int64),
                }
            )
            for job in jobs
        ]
    )
    for x, y in zip(plain, rich, strict=False):
        assert isinstance(x, SampleOutput) and isinstance(y, SampleOutput)
        assert x.prompt_logprobs is None and x.topk_prompt_logprobs is None
        assert x.target_prompt_logprobs is None and x.prompt_alt_tokens is None
        assert y.target_prompt_logprobs is not None and y.prompt_alt_tokens is not None
        for sx, sy in zip(x.sequences, y.sequences, strict=False):
            assert sx.topk_logprobs is None and sy.topk_logprobs is not None
            assert sx.tokens == sy.tokens and sx.logprobs == sy.logprobs and sx.stop_reason == sy.stop_reason


def test_choose_tokens_with_a_precomputed_distribution_is_identical() -> None:
    from tinker_server.engine import sampling

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen) * 3
    temperature = torch.tensor([0.0, 0.5, 1.0, 1.7])
    top_k = torch.tensor([0, 5, 0, 10])
    top_p = torch.tensor([1.0, 1.0, 0.6, 0.9])
    a = sampling.choose_tokens(logits, temperature, top_k, top_p, [torch.Generator().manual_seed(i) for i in range(4)])
    b = sampling.choose_tokens(
        logits,
        temperature,
        top_k,
        top_p,
        [torch.Generator().manual_seed(i) for i in range(4)],
        logp=sampling.scaled_logprobs(logits, temperature),
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_prompt_logprobs_last_n(tuned: Engine) -> None:
    logp = _reference_prompt_logp(tuned, "a", PROMPT)
    expected = logp.gather(1, torch.tensor(PROMPT[1:])[:, None])[:, 0].numpy()
    n = 3
    out = _one(
        tuned,
        SampleJob("a", PROMPT, max_tokens=1, prompt_logprobs=True, prompt_logprobs_last_n=n, topk_prompt_logprobs=2),
    )
    assert out.prompt_logprobs is not None and out.topk_prompt_logprobs is not None
    assert len(out.prompt_logprobs) == len(out.topk_prompt_logprobs) == len(PROMPT)
    assert out.prompt_logprobs[: len(PROMPT) - n] == [None] * (len(PROMPT) - n)
    assert out.topk_prompt_logprobs[: len(PROMPT) - n] == [None] * (len(PROMPT) - n)
    np.testing.assert_allclose(floats(out.prompt_logprobs[-n:]), expected[-n:], rtol=1e-5, atol=1e-5)
    for pos, pairs in zip(range(len(PROMPT) - n, len(PROMPT)), out.topk_prompt_logprobs[-n:], strict=False):
        assert pairs is not None
        assert [t for t, _ in pairs] == torch.topk(logp[pos - 1], 2).indices.tolist()
    for big in (len(PROMPT) - 1, len(PROMPT), 100):  # n >= the prompt: every position but the first
        whole = _one(tuned, SampleJob("a", PROMPT, max_tokens=1, prompt_logprobs=True, prompt_logprobs_last_n=big))
        assert whole.prompt_logprobs is not None and whole.prompt_logprobs[0] is None
        np.testing.assert_allclose(floats(whole.prompt_logprobs[1:]), expected, rtol=1e-5, atol=1e-5)


def test_prompt_logprobs_last_n_runs_the_unembedding_only_where_needed(tuned: Engine, monkeypatch) -> None:
    parts = tuned._parts
    rows: list[int] = []
    original = parts.logits

    def counting(hidden: torch.Tensor) -> torch.Tensor:
        rows.append(int(hidden.shape[0] * hidden.shape[1]))
        return original(hidden)

    monkeypatch.setattr(parts, "logits", counting)
    long_prompt = (PROMPT * 40)[:300]
    _one(tuned, SampleJob("a", long_prompt, max_tokens=0, prompt_logprobs=True, prompt_logprobs_last_n=4))
    assert sum(rows) == 1 + 4  # the last position (for decoding) and the 4 asked for
    rows.clear()
    _one(tuned, SampleJob("a", long_prompt, max_tokens=0, prompt_logprobs=True))
    assert sum(rows) == 1 + len(long_prompt) - 1


def test_target_prompt_logprobs_match_a_plain_forward(tuned: Engine) -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 512, (len(PROMPT) - 1, 3)).astype(np.int64)
    targets[:, 0] = PROMPT[1:]  # the prompt's own next tokens ...
    targets[rng.random(targets.shape) < 0.3] = -1  # ... and some cells without a request
    out = _one(tuned, SampleJob("a", PROMPT, max_tokens=2, seed=1, target_prompt_logprobs=targets))
    got = out.target_prompt_logprobs
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == targets.shape
    logp = _reference_prompt_logp(tuned, "a", PROMPT)
    expected = logp.gather(1, torch.from_numpy(targets).clamp(min=0)).numpy()
    expected[targets == -1] = 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[targets == -1] == 0.0).all()
    assert out.prompt_logprobs is None and out.prompt_alt_tokens is None


def test_prompt_alt_tokens_are_draws_at_the_request_temperature(tuned: Engine) -> None:
    """``prompt_alt_tokens_k`` draws k tokens per prompt position from the next-token
    distribution at the request's temperature; logprobs are those of the drawn tokens."""
    logp = _reference_prompt_logp(tuned, "a", PROMPT)
    for temperature in (1.0, 0.5):
        out = _one(tuned, SampleJob("a", PROMPT, max_tokens=1, seed=4, temperature=temperature, prompt_alt_tokens_k=5))
        assert out.prompt_alt_tokens is not None
        ids, lps = out.prompt_alt_tokens
        assert ids.dtype == np.int32 and lps.dtype == np.float32
        assert ids.shape == lps.shape == (len(PROMPT) - 1, 5)
        scaled = torch.log_softmax(logp / temperature, dim=-1)
        np.testing.assert_allclose(lps, scaled.gather(1, torch.from_numpy(ids).long()).numpy(), rtol=1e-5, atol=1e-5)
        again = _one(
            tuned, SampleJob("a", PROMPT, max_tokens=1, seed=4, temperature=temperature, prompt_alt_tokens_k=5)
        )
        assert again.prompt_alt_tokens is not None
        np.testing.assert_array_equal(again.prompt_alt_tokens[0], ids)  # seeded: the same draws
        assert out.prompt_logprobs is None and out.target_prompt_logprobs is None
    alt = _one(tuned, SampleJob("a", PROMPT, max_tokens=1, seed=5, prompt_alt_tokens_k=5)).prompt_alt_tokens
    assert alt is not None
    other = alt[0]
    assert not np.array_equal(other, ids)  # draws, not a fixed ranking
    greedy = _one(tuned, SampleJob("a", PROMPT, max_tokens=1, temperature=0.0, prompt_alt_tokens_k=3)).prompt_alt_tokens
    assert greedy is not None
    best = logp.max(dim=-1)
    np.testing.assert_array_equal(greedy[0], np.repeat(best.indices.numpy()[:, None], 3, axis=1))
    np.testing.assert_allclose(greedy[1][:, 0], best.values.numpy(), rtol=1e-5, atol=1e-5)


def test_prompt_outputs_of_a_one_token_prompt_are_empty(tuned: Engine) -> None:
    out = _one(
        tuned,
        SampleJob(
            "a",
            [7],
            max_tokens=2,
            seed=1,
            prompt_alt_tokens_k=3,
            target_prompt_logprobs=np.zeros((0, 2), np.int64),
            prompt_logprobs=True,
            prompt_logprobs_last_n=1,
        ),
    )
    assert out.prompt_logprobs == [None]
    assert out.target_prompt_logprobs is not None and out.target_prompt_logprobs.shape == (0, 2)
    assert out.prompt_alt_tokens is not None
    assert out.prompt_alt_tokens[0].shape == out.prompt_alt_tokens[1].shape == (0, 3)


def test_extra_outputs_survive_split_batches(tuned: Engine) -> None:
    """A job split over several decode batches (a small KV budget) keeps its prompt outputs
    (computed once, with the first piece) and every sample's top-k rows."""
    from tinker_server.engine import sampling

    targets = np.tile(np.array([[3, -1]], np.int64), (len(PROMPT) - 1, 1))
    job = SampleJob(
        "a",
        PROMPT,
        num_samples=5,
        max_tokens=6,
        seed=1,
        prompt_logprobs=True,
        prompt_logprobs_last_n=2,
        topk_sample_logprobs=2,
        prompt_alt_tokens_k=2,
        target_prompt_logprobs=targets,
    )
    prepared = [sampling.prepare_job(job, tuned._adapters["a"], vocab_size=512, max_context=2048)]
    whole = sampling.run_jobs(tuned._parts, tuned.tokenizer, prepared)[0]
    per_token = sampling.kv_bytes_per_token(tuned._parts)
    split = sampling.run_jobs(tuned._parts, tuned.tokenizer, prepared, max_kv_bytes=per_token * 30)[0]
    assert [s.tokens for s in whole.sequences] == [s.tokens for s in split.sequences]
    # other batch shapes round differently (~1e-5 per step)
    for x, y in zip(whole.sequences, split.sequences, strict=False):
        assert x.topk_logprobs is not None and y.topk_logprobs is not None
        assert len(x.topk_logprobs) == len(y.topk_logprobs) == 6
        assert [[t for t, _ in row] for row in x.topk_logprobs] == [[t for t, _ in row] for row in y.topk_logprobs]
        np.testing.assert_allclose(
            [[v for _, v in row] for row in x.topk_logprobs],
            [[v for _, v in row] for row in y.topk_logprobs],
            rtol=0,
            atol=1e-4,
        )
    assert whole.prompt_logprobs == split.prompt_logprobs
    np.testing.assert_array_equal(whole.target_prompt_logprobs, split.target_prompt_logprobs)
    assert whole.prompt_alt_tokens is not None and split.prompt_alt_tokens is not None
    np.testing.assert_array_equal(whole.prompt_alt_tokens[0], split.prompt_alt_tokens[0])

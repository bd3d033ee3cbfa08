"""forward_backward, gradient accumulation, micro-batching, multi-adapter batches, AdamW."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinker_server.engine import TINY_MODEL, AdamConfig, Engine, EngineError, LoraSpec, TrainOutput, load_engine, losses

from .conftest import adapter_grads, adapter_tensors, assert_tensors_close, ok, random_datums, randomize_adapter

ADAM = AdamConfig(learning_rate=1e-3, weight_decay=0.01)


def _fresh(engine: Engine, adapter_id: str, seed: int = 3) -> None:
    engine.create_adapter(adapter_id, LoraSpec(rank=4, seed=seed))
    randomize_adapter(engine, adapter_id, seed=seed + 100)


def test_same_seed_same_init_and_b_starts_at_zero(engine: Engine) -> None:
    engine.create_adapter("a", LoraSpec(rank=8, seed=42))
    engine.create_adapter("b", LoraSpec(rank=8, seed=42))
    engine.create_adapter("c", LoraSpec(rank=8, seed=43))
    a, b, c = (adapter_tensors(engine, x) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if "lora_A" in k)
    assert all(float(v.abs().max()) == 0.0 for k, v in a.items() if "lora_B" in k)
    # A is kaiming-uniform: bounded by 1/sqrt(in_features)
    assert all(float(v.abs().max()) <= 1 / np.sqrt(v.shape[1]) for k, v in a.items() if "lora_A" in k)


def test_targets_follow_the_spec(engine: Engine) -> None:
    engine.create_adapter("attn", LoraSpec(rank=2, seed=1, train_mlp=False, train_unembed=False))
    keys = adapter_tensors(engine, "attn")
    assert {k.split(".")[-3] for k in keys} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    engine.create_adapter("all", LoraSpec(rank=2, seed=1))
    keys = adapter_tensors(engine, "all")
    assert "base_model.model.lm_head.lora_A.weight" in keys
    assert keys["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (2, 64)
    assert keys["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape == (64, 2)
    assert engine.adapter_spec("attn") == LoraSpec(rank=2, seed=1, train_mlp=False, train_unembed=False)


def test_fresh_adapter_leaves_the_model_unchanged(engine: Engine) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    engine.create_adapter("b", LoraSpec(rank=4, seed=2))
    data = random_datums(3, seed=1)
    la = engine.forward_backward("a", data, "cross_entropy", None, backward=False)
    lb = engine.forward_backward("b", data, "cross_entropy", None, backward=False)
    for x, y in zip(la.loss_fn_outputs, lb.loss_fn_outputs, strict=False):
        np.testing.assert_array_equal(x["logprobs"], y["logprobs"])


def test_base_weights_get_no_gradients_and_forward_accumulates_nothing(engine: Engine) -> None:
    _fresh(engine, "a")
    engine.forward_backward("a", random_datums(2, seed=1), "cross_entropy", None, backward=False)
    assert all(p.grad is None for p in engine._adapters["a"].parameters())
    engine.forward_backward("a", random_datums(2, seed=1), "cross_entropy", None, backward=True)
    assert all(p.grad is not None for p in engine._adapters["a"].parameters())
    assert all(p.grad is None and not p.requires_grad for p in engine._parts.model.parameters())


def test_two_half_batches_equal_one_full_batch(engine: Engine) -> None:
    _fresh(engine, "full", seed=5)
    _fresh(engine, "halves", seed=5)
    data = random_datums(6, seed=2)
    full = engine.forward_backward("full", data, "cross_entropy", None, backward=True)
    first = engine.forward_backward("halves", data[:3], "cross_entropy", None, backward=True)
    second = engine.forward_backward("halves", data[3:], "cross_entropy", None, backward=True)
    assert first.metrics["loss:sum"] + second.metrics["loss:sum"] == pytest.approx(full.metrics["loss:sum"], rel=1e-6)
    assert_tensors_close(adapter_grads(engine, "halves"), adapter_grads(engine, "full"))
    m_full = engine.optim_step("full", ADAM)
    m_halves = engine.optim_step("halves", ADAM)
    assert m_full["grad_norm:mean"] == pytest.approx(m_halves["grad_norm:mean"], rel=1e-5)
    assert_tensors_close(adapter_tensors(engine, "halves"), adapter_tensors(engine, "full"))
    assert all(p.grad is None for p in engine._adapters["full"].parameters())  # zeroed by the step


def test_micro_batching_does_not_change_results(home, engine: Engine) -> None:
    small = load_engine(TINY_MODEL, home=home, max_tokens_per_microbatch=16, activation_checkpointing=False)
    data = random_datums(7, seed=3, lengths=(3, 20))
    for e in (engine, small):
        _fresh(e, "a", seed=9)
    big_out = engine.forward_backward("a", data, "cross_entropy", None, backward=True)
    small_out = small.forward_backward("a", data, "cross_entropy", None, backward=True)
    for x, y in zip(big_out.loss_fn_outputs, small_out.loss_fn_outputs, strict=False):
        np.testing.assert_allclose(x["logprobs"], y["logprobs"], rtol=1e-5, atol=1e-5)
    assert small_out.metrics["loss:sum"] == pytest.approx(big_out.metrics["loss:sum"], rel=1e-5)
    assert_tensors_close(adapter_grads(small, "a"), adapter_grads(engine, "a"))


def test_microbatches_respect_the_token_budget() -> None:
    from tinker_server.engine.train import Row, _microbatches

    rows = [
        (0, i, Row(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), {}))
        for i, n in enumerate([5, 40, 7, 12, 3, 30])
    ]
    batches = _microbatches(rows, budget=32)
    assert sorted(d for b in batches for _, d, _ in b) == list(range(6))
    for batch in batches:
        width = max(r.length for _, _, r in batch)
        assert len(batch) == 1 or len(batch) * width <= 32


def test_optim_step_changes_only_its_adapter(engine: Engine) -> None:
    _fresh(engine, "a", seed=1)
    _fresh(engine, "b", seed=2)
    before_b = adapter_tensors(engine, "b")
    before_a = adapter_tensors(engine, "a")
    data = random_datums(2, seed=4)
    engine.forward_backward("a", data, "cross_entropy", None, backward=True)
    engine.forward_backward("b", data, "cross_entropy", None, backward=True)
    metrics = engine.optim_step("a", ADAM)
    assert metrics["step:max"] == 1.0 and metrics["learning_rate:mean"] == pytest.approx(1e-3)
    assert set(metrics) == {"grad_norm:mean", "learning_rate:mean", "step:max"}
    after_a, after_b = adapter_tensors(engine, "a"), adapter_tensors(engine, "b")
    assert all(torch.equal(before_b[k], after_b[k]) for k in before_b)
    assert all(not torch.equal(before_a[k], after_a[k]) for k in before_a)
    assert all(p.grad is not None for p in engine._adapters["b"].parameters())  # b's gradients wait


def test_many_adapters_in_one_batch_equal_each_alone(home, engine: Engine) -> None:
    alone = load_engine(TINY_MODEL, home=home)
    specs = {
        "a": ("cross_entropy", ("weights",)),
        "b": ("importance_sampling", ("logprobs", "advantages")),
        "c": ("ppo", ("logprobs", "advantages")),
    }
    for e in (engine, alone):
        for i, name in enumerate(specs):
            _fresh(e, name, seed=20 + i)
    items = [
        (name, random_datums(3, seed=30 + i, keys=keys), loss, None, True)
        for i, (name, (loss, keys)) in enumerate(specs.items())
    ]
    items.append(("a", random_datums(2, seed=99), "cross_entropy", None, False))  # forward-only rider
    together = engine.forward_backward_many(items)
    for (name, data, loss, cfg, backward), out in zip(items, together, strict=False):
        ref = alone.forward_backward(name, data, loss, cfg, backward=backward)
        assert isinstance(out, TrainOutput)
        assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-5, abs=1e-5)
        for x, y in zip(out.loss_fn_outputs, ref.loss_fn_outputs, strict=False):
            np.testing.assert_allclose(x["logprobs"], y["logprobs"], rtol=1e-5, atol=1e-6)
    for name in specs:
        assert_tensors_close(adapter_grads(engine, name), adapter_grads(alone, name))
        engine.optim_step(name, ADAM)
        alone.optim_step(name, ADAM)
        assert_tensors_close(adapter_tensors(engine, name), adapter_tensors(alone, name))


def test_a_bad_item_does_not_fail_the_others(engine: Engine) -> None:
    _fresh(engine, "a")
    good = random_datums(2, seed=1)
    results = engine.forward_backward_many(
        [
            ("a", good, "cross_entropy", None, True),
            ("missing", good, "cross_entropy", None, True),
            ("a", good, "nope", None, True),
        ]
    )
    assert isinstance(results[0], TrainOutput)
    assert isinstance(results[1], EngineError) and "missing" in str(results[1])
    assert isinstance(results[2], EngineError) and "unknown loss_fn 'nope'" in str(results[2])


def test_a_failing_computation_leaves_gradients_untouched(engine: Engine, home) -> None:
    """A loss that blows up mid-batch fails only its own item; the other item's result and
    gradients equal running it alone, and nothing partial is accumulated."""
    calls = {"n": 0}

    @losses.loss("explode_for_test", optional=("weights",))
    def explode(lp, inputs, cfg):
        calls["n"] += 1
        raise RuntimeError("boom")

    try:
        alone = load_engine(TINY_MODEL, home=home)
        for e in (engine, alone):
            _fresh(e, "a", seed=1)
            _fresh(e, "b", seed=2)
            e.forward_backward("a", random_datums(1, seed=8), "cross_entropy", None, backward=True)
        data = random_datums(3, seed=5)
        results = engine.forward_backward_many(
            [
                ("a", data, "cross_entropy", None, True),
                ("b", data, "explode_for_test", None, True),
            ]
        )
        assert isinstance(results[0], TrainOutput)
        assert isinstance(results[1], EngineError) and "boom" in str(results[1])
        assert all(p.grad is None for p in engine._adapters["b"].parameters())
        alone.forward_backward("a", data, "cross_entropy", None, backward=True)
        assert_tensors_close(adapter_grads(engine, "a"), adapter_grads(alone, "a"))
        assert calls["n"] >= 1
    finally:
        losses.unregister("explode_for_test")


def test_empty_data_gives_an_empty_output(engine: Engine) -> None:
    engine.create_adapter("a", LoraSpec(rank=2, seed=1))
    out = engine.forward_backward("a", [], "cross_entropy", None, backward=True)
    assert out.loss_fn_outputs == [] and out.metrics == {"loss:sum": 0.0}


def test_adamw_matches_torch(engine: Engine) -> None:
    _fresh(engine, "a", seed=4)
    start = adapter_tensors(engine, "a")
    params = {k: torch.nn.Parameter(v.clone()) for k, v in start.items()}
    cfg = AdamConfig(learning_rate=2e-3, beta1=0.8, beta2=0.9, eps=1e-8, weight_decay=0.1)
    opt = torch.optim.AdamW(
        params.values(),
        lr=cfg.learning_rate,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        foreach=False,
    )
    for step in range(3):
        engine.forward_backward("a", random_datums(2, seed=step), "cross_entropy", None, backward=True)
        for k, p in engine._adapters["a"].named_parameters():
            assert p.grad is not None
            params[k].grad = p.grad.detach().clone()
        metrics = engine.optim_step("a", cfg)
        opt.step()
        assert metrics["step:max"] == step + 1
    assert_tensors_close(adapter_tensors(engine, "a"), {k: p.detach() for k, p in params.items()}, rtol=1e-6)


def test_grad_clipping(engine: Engine) -> None:
    _fresh(engine, "a", seed=4)
    _fresh(engine, "b", seed=4)
    data = random_datums(2, seed=1)
    for name in "ab":
        engine.forward_backward(name, data, "cross_entropy", None, backward=True)
    norm = engine.optim_step("a", AdamConfig(learning_rate=1e-3))["grad_norm:mean"]
    grads = adapter_grads(engine, "b")
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    assert norm == pytest.approx(float(expected), rel=1e-5)
    # with Adam, clipping on step 1 only rescales m and sqrt(v) together: same update unless eps matters
    clipped = engine.optim_step("b", AdamConfig(learning_rate=1e-3, eps=1e-3, grad_clip_norm=norm / 10))
    assert clipped["grad_norm:mean"] == pytest.approx(norm, rel=1e-6)
    a, b = adapter_tensors(engine, "a"), adapter_tensors(engine, "b")
    assert any(not torch.allclose(a[k], b[k], rtol=0, atol=1e-9) for k in a)


def test_frozen_copy_is_a_snapshot(engine: Engine) -> None:
    _fresh(engine, "a")
    engine.copy_adapter("a", "snap")
    snap = adapter_tensors(engine, "snap")
    engine.forward_backward("a", random_datums(2, seed=1), "cross_entropy", None, backward=True)
    engine.optim_step("a", ADAM)
    assert all(torch.equal(snap[k], v) for k, v in adapter_tensors(engine, "snap").items())
    assert engine.adapter_spec("snap") == engine.adapter_spec("a")
    out = engine.forward_backward("snap", random_datums(1, seed=2), "cross_entropy", None, backward=False)
    assert len(out.loss_fn_outputs) == 1
    with pytest.raises(EngineError, match="frozen"):
        engine.forward_backward("snap", random_datums(1, seed=2), "cross_entropy", None, backward=True)
    with pytest.raises(EngineError, match="frozen"):
        engine.optim_step("snap", ADAM)
    engine.drop_adapter("snap")
    assert not engine.has_adapter("snap") and engine.has_adapter("a")


def test_training_reduces_the_loss(engine: Engine) -> None:
    engine.create_adapter("a", LoraSpec(rank=8, seed=0))
    text = engine.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    datum = random_datums(1, seed=0)[0]
    datum.tokens = text[:-1]
    datum.loss_fn_inputs = {"target_tokens": np.array(text[1:]), "weights": np.ones(len(text) - 1, np.float32)}
    losses_seen = []
    for _ in range(15):
        losses_seen.append(
            engine.forward_backward("a", [datum], "cross_entropy", None, backward=True).metrics["loss:sum"]
        )
        engine.optim_step("a", AdamConfig(learning_rate=1e-2))
    assert losses_seen[-1] < 0.2 * losses_seen[0]


def test_head_blocks_cover_every_token_once() -> None:
    from tinker_server.engine.train import HEAD_BLOCK_TOKENS, _head_blocks

    lengths = [1300, 600, 300, 200, 100, 100, 7, 1]
    seen: list[set[int]] = [set() for _ in lengths]
    for b0, b1, s, e in _head_blocks(lengths):
        assert (b1 - b0) * (e - s) <= HEAD_BLOCK_TOKENS
        for b in range(b0, b1):
            seen[b].update(range(s, min(e, lengths[b])))
    assert [len(x) for x in seen] == lengths and all(x == set(range(n)) for x, n in zip(seen, lengths, strict=False))


def test_long_rows_match_the_reference(engine: Engine) -> None:
    from .conftest import MergedReference

    _fresh(engine, "a", seed=2)
    data = random_datums(1, seed=1, lengths=(1100, 1100)) + random_datums(2, seed=2)
    out = engine.forward_backward("a", data, "cross_entropy", None, backward=False)
    ref = MergedReference(engine, "a")
    for datum, o in zip(data, out.loss_fn_outputs, strict=False):
        np.testing.assert_allclose(o["logprobs"], ref.logprobs(datum).detach().numpy(), rtol=1e-5, atol=2e-5)


def test_activation_checkpointing_gives_the_same_gradients(home, engine: Engine) -> None:
    ckpt = load_engine(TINY_MODEL, home=home, activation_checkpointing=True)
    assert load_engine(TINY_MODEL, home=home, activation_checkpointing=False)._checkpointing is None
    items = []
    for e in (engine, ckpt):
        _fresh(e, "a", seed=1)
        _fresh(e, "b", seed=2)
    items = [
        ("a", random_datums(3, seed=1), "cross_entropy", None, True),
        ("b", random_datums(2, seed=2, keys=("advantages", "logprobs")), "importance_sampling", None, True),
    ]
    plain_out = engine.forward_backward_many(items)
    ckpt_out = ckpt.forward_backward_many(items)
    for x, y in zip(plain_out, ckpt_out, strict=False):
        assert ok(x).metrics["loss:sum"] == pytest.approx(ok(y).metrics["loss:sum"], rel=1e-6)
    for name in "ab":
        assert_tensors_close(adapter_grads(ckpt, name), adapter_grads(engine, name))


def test_auto_checkpointing_of_large_micro_batches(home, engine: Engine) -> None:
    never = load_engine(TINY_MODEL, home=home, activation_checkpointing=False)
    long, short = random_datums(1, seed=3, lengths=(1100, 1100)), random_datums(2, seed=4)
    for e in (engine, never):
        _fresh(e, "a", seed=1)
    for data, checkpointed in ((long, True), (short, False)):
        for e in (engine, never):
            e.forward_backward("a", data, "cross_entropy", None, backward=True)
        assert engine._checkpointing is not None and engine._checkpointing.enabled is checkpointed
    assert_tensors_close(adapter_grads(engine, "a"), adapter_grads(never, "a"))


def test_a_non_finite_loss_is_refused_without_touching_gradients(engine: Engine) -> None:
    _fresh(engine, "a", seed=1)
    _fresh(engine, "b", seed=2)
    bad = random_datums(2, seed=1, keys=("logprobs", "advantages"))
    bad[1].loss_fn_inputs["logprobs"][0] = -1e30  # finite, but exp(lp - logprobs) overflows
    results = engine.forward_backward_many(
        [
            ("a", bad, "importance_sampling", None, True),
            ("b", random_datums(2, seed=2), "cross_entropy", None, True),
        ]
    )
    assert isinstance(results[0], EngineError) and "importance_sampling loss is not finite" in str(results[0])
    assert isinstance(results[1], TrainOutput)
    assert all(p.grad is None for p in engine._adapters["a"].parameters())
    assert all(p.grad is not None for p in engine._adapters["b"].parameters())

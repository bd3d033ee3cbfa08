"""Each loss: value, logprobs and every LoRA gradient against plain-autograd references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinker_server.engine import Engine, LoraSpec, TrainDatum

from .conftest import MergedReference, adapter_grads, assert_tensors_close, random_datums, randomize_adapter


def _t(datum: TrainDatum, key: str) -> torch.Tensor:
    return torch.as_tensor(np.asarray(datum.loss_fn_inputs[key], dtype=np.float32))


def ref_cross_entropy(lp, d, cfg):
    w = _t(d, "weights") if "weights" in d.loss_fn_inputs else torch.ones_like(lp)
    return -(w * lp).sum()


def ref_importance_sampling(lp, d, cfg):
    return -(torch.exp(lp - _t(d, "logprobs")) * _t(d, "advantages")).sum()


def ref_ppo(lp, d, cfg):
    lo, hi = cfg.get("clip_low_threshold", 0.8), cfg.get("clip_high_threshold", 1.2)
    r = torch.exp(lp - _t(d, "logprobs"))
    a = _t(d, "advantages")
    return -torch.minimum(r * a, torch.clamp(r, lo, hi) * a).sum()


def ref_cispo(lp, d, cfg):
    lo, hi = cfg.get("clip_low_threshold", 0.0), cfg.get("clip_high_threshold", 4.0)
    r = torch.exp(lp - _t(d, "logprobs"))
    return -(torch.clamp(r, lo, hi).detach() * lp * _t(d, "advantages")).sum()


def ref_dro(lp, d, cfg):
    beta = cfg.get("beta", 0.05)
    return -(lp * _t(d, "advantages") - 0.5 * beta * (lp - _t(d, "logprobs")) ** 2).sum()


RL_KEYS = ("logprobs", "advantages")
CASES = [
    ("cross_entropy", ref_cross_entropy, ("weights",), None),
    ("importance_sampling", ref_importance_sampling, RL_KEYS, None),
    ("ppo", ref_ppo, RL_KEYS, None),
    ("ppo", ref_ppo, RL_KEYS, {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5}),
    ("cispo", ref_cispo, RL_KEYS, None),
    ("cispo", ref_cispo, RL_KEYS, {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
    ("dro", ref_dro, RL_KEYS, None),
    ("dro", ref_dro, RL_KEYS, {"beta": 0.7}),
]


def _old_logprobs_near_current(engine: Engine, data: list[TrainDatum], seed: int) -> None:
    """Set sampler logprobs to current logprobs plus noise: ratios both inside and outside the clip range."""
    rng = np.random.default_rng(seed)
    current = engine.forward_backward("a", data, "cross_entropy", None, backward=False).loss_fn_outputs
    for datum, out in zip(data, current):
        noise = rng.normal(0.0, 0.4, out["logprobs"].shape).astype(np.float32)
        datum.loss_fn_inputs["logprobs"] = out["logprobs"] + noise
        datum.loss_fn_inputs.pop("weights", None)


@pytest.mark.parametrize(("loss_fn", "reference", "keys", "config"), CASES)
def test_loss_matches_autograd_reference(engine: Engine, loss_fn, reference, keys, config) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=3))
    randomize_adapter(engine, "a", seed=11)
    data = random_datums(4, seed=5, keys=("weights",) if loss_fn == "cross_entropy" else ("advantages",))
    if loss_fn != "cross_entropy":
        _old_logprobs_near_current(engine, data, seed=9)
        ratios = np.concatenate([
            np.exp(o["logprobs"] - d.loss_fn_inputs["logprobs"])
            for d, o in zip(data, engine.forward_backward("a", data, "cross_entropy", None, backward=False).loss_fn_outputs)
        ])
        advantages = np.concatenate([d.loss_fn_inputs["advantages"] for d in data])
        assert (ratios < 0.8).any() and (ratios > 1.2).any() and (advantages < 0).any() and (advantages > 0).any()

    out = engine.forward_backward("a", data, loss_fn, config, backward=True)

    ref = MergedReference(engine, "a")
    total = torch.zeros(())
    for datum, output in zip(data, out.loss_fn_outputs):
        lp = ref.logprobs(datum)
        assert output["logprobs"].dtype == np.float32 and output["logprobs"].shape == (len(datum.tokens),)
        torch.testing.assert_close(torch.from_numpy(output["logprobs"]), lp.detach(), rtol=1e-5, atol=1e-5)
        total = total + reference(lp, datum, config or {})
    total.backward()

    assert list(out.metrics) == ["loss:sum"]
    assert out.metrics["loss:sum"] == pytest.approx(float(total.detach()), rel=1e-5)
    assert_tensors_close(adapter_grads(engine, "a"), ref.grads())
    assert any(float(g.abs().max()) > 0 for k, g in ref.grads().items() if "lora_A" in k)


def test_cross_entropy_without_weights_means_all_ones(engine: Engine) -> None:
    engine.create_adapter("a", LoraSpec(rank=2, seed=1))
    data = random_datums(2, seed=1, keys=())
    ones = [TrainDatum(d.tokens, {**d.loss_fn_inputs, "weights": np.ones(len(d.tokens), np.float32)}) for d in data]
    mixed = [data[0], ones[1]]  # a datum may omit the optional input while another has it
    a = engine.forward_backward("a", data, "cross_entropy", None, backward=False).metrics["loss:sum"]
    b = engine.forward_backward("a", ones, "cross_entropy", None, backward=False).metrics["loss:sum"]
    c = engine.forward_backward("a", mixed, "cross_entropy", None, backward=False).metrics["loss:sum"]
    assert a == pytest.approx(b, rel=1e-6) and a == pytest.approx(c, rel=1e-6)


def test_negative_weights_flip_the_gradient(engine: Engine) -> None:
    engine.create_adapter("a", LoraSpec(rank=2, seed=1))
    randomize_adapter(engine, "a", seed=2)
    data = random_datums(2, seed=3)
    engine.forward_backward("a", data, "cross_entropy", None, backward=True)
    g = adapter_grads(engine, "a")
    engine._adapters["a"].zero_grad()
    for d in data:
        d.loss_fn_inputs["weights"] = -d.loss_fn_inputs["weights"]
    engine.forward_backward("a", data, "cross_entropy", None, backward=True)
    for key, value in adapter_grads(engine, "a").items():
        torch.testing.assert_close(value, -g[key], rtol=1e-5, atol=1e-7)


def test_per_token_clip_thresholds_override_config(engine: Engine) -> None:
    engine.create_adapter("a", LoraSpec(rank=2, seed=1))
    data = random_datums(2, seed=4, keys=("advantages",))
    _old_logprobs_near_current(engine, data, seed=2)
    via_config = engine.forward_backward(
        "a", data, "ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}, backward=False
    ).metrics["loss:sum"]
    for d in data:
        n = len(d.tokens)
        d.loss_fn_inputs["clip_low_threshold"] = np.full(n, 0.9, np.float32)
        d.loss_fn_inputs["clip_high_threshold"] = np.full(n, 1.1, np.float32)
    via_tensors = engine.forward_backward("a", data, "ppo", None, backward=False).metrics["loss:sum"]
    assert via_tensors == pytest.approx(via_config, rel=1e-6)

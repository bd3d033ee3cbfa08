"""Each loss: value, logprobs and every LoRA gradient against plain-autograd references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinker_server.engine import TINY_MODEL, Engine, LoraSpec, TrainDatum, load_engine

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
    for datum, out in zip(data, current, strict=False):
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
        ratios = np.concatenate(
            [
                np.exp(o["logprobs"] - d.loss_fn_inputs["logprobs"])
                for d, o in zip(
                    data,
                    engine.forward_backward("a", data, "cross_entropy", None, backward=False).loss_fn_outputs,
                    strict=False,
                )
            ]
        )
        advantages = np.concatenate([d.loss_fn_inputs["advantages"] for d in data])
        assert (ratios < 0.8).any() and (ratios > 1.2).any() and (advantages < 0).any() and (advantages > 0).any()

    out = engine.forward_backward("a", data, loss_fn, config, backward=True)

    ref = MergedReference(engine, "a")
    total = torch.zeros(())
    for datum, output in zip(data, out.loss_fn_outputs, strict=False):
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


# -- gspo: one importance ratio per sequence ----------------------------------------------------


def ref_gspo(lp, d, cfg):
    """Tinker's GSPO-token: every token's ratio has the value of its sequence's ratio
    ``s = exp(mean(lp - q))`` over the counted tokens, and the gradient of its own ``lp``."""
    lo, hi = cfg.get("clip_low_threshold", 0.8), cfg.get("clip_high_threshold", 1.2)
    q, a = _t(d, "logprobs"), _t(d, "advantages")
    counted = (_t(d, "sequence_ratio_mask") != 0) if "sequence_ratio_mask" in d.loss_fn_inputs else (a != 0)
    s = torch.exp((lp.detach() - q)[counted].mean()) if bool(counted.any()) else torch.tensor(1.0)
    p = torch.exp(lp)
    r = s * p / p.detach()
    return -torch.minimum(r * a, torch.clamp(r, lo, hi) * a).sum()


def _sequence_ratio(engine: Engine, datum: TrainDatum) -> float:
    lp = torch.from_numpy(
        engine.forward_backward("a", [datum], "cross_entropy", None, backward=False).loss_fn_outputs[0]["logprobs"]
    )
    a = _t(datum, "advantages")
    mask = (_t(datum, "sequence_ratio_mask") != 0) if "sequence_ratio_mask" in datum.loss_fn_inputs else (a != 0)
    return float(torch.exp((lp - _t(datum, "logprobs"))[mask].mean())) if bool(mask.any()) else 1.0


def _gspo_data(engine: Engine, mask: str) -> list[TrainDatum]:
    """Six datums whose sequence ratios fall below, inside and above [0.8, 1.2]; ``mask``:
    ``"all"`` (every datum has sequence_ratio_mask), ``"none"`` (none has: nonzero advantages
    count), or ``"mixed"``."""
    data = random_datums(6, seed=21, keys=("advantages",))
    rng = np.random.default_rng(22)
    current = engine.forward_backward("a", data, "cross_entropy", None, backward=False).loss_fn_outputs
    # log s = -offset: ratios 1.82, 1.16, 0.95, (1.0: no counted token when masked), 0.74, 0.50
    for i, (datum, out, offset) in enumerate(zip(data, current, (-0.6, -0.15, 0.05, 0.1, 0.3, 0.7), strict=False)):
        n = len(datum.tokens)
        counted = np.ones(n, bool)
        counted[:2] = False
        if mask == "all" or (mask == "mixed" and i % 2 == 0):
            m = counted.astype(np.float32)  # prompt-like positions outside the ratio (they still carry advantages)
            if i == 3:
                m[:] = 0.0  # no counted token: the ratio is 1
            datum.loss_fn_inputs["sequence_ratio_mask"] = m
        else:
            datum.loss_fn_inputs["advantages"][:2] = 0.0  # prompt positions: no advantage, not counted
        noise = rng.normal(0.0, 0.4, n)  # token ratios spread widely; their mean over the counted tokens is 0
        noise -= noise[counted].mean()
        datum.loss_fn_inputs["logprobs"] = (out["logprobs"] + noise + offset).astype(np.float32)
    return data


@pytest.mark.parametrize(
    ("mask", "config", "microbatch"),
    [
        ("all", None, 2048),
        ("all", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}, 2048),
        ("none", None, 2048),
        ("mixed", None, 2048),
        ("mixed", None, 24),  # datums spread over several micro-batches
    ],
)
def test_gspo_matches_autograd_reference(home, mask: str, config, microbatch: int) -> None:
    engine = load_engine(TINY_MODEL, home=home, max_tokens_per_microbatch=microbatch)
    engine.create_adapter("a", LoraSpec(rank=4, seed=3))
    randomize_adapter(engine, "a", seed=11)
    data = _gspo_data(engine, mask)
    ratios = [_sequence_ratio(engine, d) for d in data]
    low, high = (config or {}).get("clip_low_threshold", 0.8), (config or {}).get("clip_high_threshold", 1.2)
    assert min(ratios) < low and max(ratios) > high and any(low < r < high and r != 1.0 for r in ratios)

    out = engine.forward_backward("a", data, "gspo", config, backward=True)

    ref = MergedReference(engine, "a")
    total = torch.zeros(())
    for datum, output in zip(data, out.loss_fn_outputs, strict=False):
        lp = ref.logprobs(datum)
        torch.testing.assert_close(torch.from_numpy(output["logprobs"]), lp.detach(), rtol=1e-5, atol=1e-5)
        total = total + ref_gspo(lp, datum, config or {})
    total.backward()
    assert out.metrics["loss:sum"] == pytest.approx(float(total.detach()), rel=1e-5)
    assert_tensors_close(adapter_grads(engine, "a"), ref.grads())
    assert any(float(g.abs().max()) > 0 for k, g in ref.grads().items() if "lora_A" in k)


def test_gspo_of_one_token_sequences_is_ppo(engine: Engine) -> None:
    """With one token per datum the sequence ratio is the token ratio, value and gradient."""
    engine.create_adapter("a", LoraSpec(rank=4, seed=3))
    randomize_adapter(engine, "a", seed=5)
    data = random_datums(12, seed=8, lengths=(1, 1), keys=("advantages",))
    _old_logprobs_near_current(engine, data, seed=3)
    config = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}
    ppo = engine.forward_backward("a", data, "ppo", config, backward=True).metrics["loss:sum"]
    ppo_grads = adapter_grads(engine, "a")
    engine._adapters["a"].zero_grad()
    gspo = engine.forward_backward("a", data, "gspo", config, backward=True).metrics["loss:sum"]
    assert gspo == pytest.approx(ppo, rel=1e-6)
    assert_tensors_close(adapter_grads(engine, "a"), ppo_grads, rtol=1e-6)


def test_string_config_values(engine: Engine) -> None:
    """A loss may declare a string-valued config key; numbers are refused there, strings elsewhere."""
    from tinker_server.engine import UserInputError, losses

    seen: list[object] = []

    @losses.loss("string_config_for_test", optional=("weights",), config={"mode": "sum", "scale": 2.0})
    def scaled(lp, inputs, cfg):
        seen.append(dict(cfg))
        return -losses.config_number(cfg, "scale") * lp.sum()

    try:
        engine.create_adapter("a", LoraSpec(rank=2, seed=1))
        data = random_datums(1, seed=2, keys=())
        engine.forward_backward("a", data, "string_config_for_test", {"mode": "mean", "scale": 3}, backward=False)
        assert seen == [{"mode": "mean", "scale": 3.0}]
        with pytest.raises(UserInputError, match=r"loss_fn_config\['mode'\] must be a string, got 1.0"):
            engine.forward_backward("a", data, "string_config_for_test", {"mode": 1.0}, backward=False)
        with pytest.raises(UserInputError, match=r"loss_fn_config\['scale'\] must be a finite number, got 'big'"):
            engine.forward_backward("a", data, "string_config_for_test", {"scale": "big"}, backward=False)
    finally:
        losses.unregister("string_config_for_test")

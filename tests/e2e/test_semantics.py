"""Issue 5 end to end: the numbers the SDK gets over HTTP from the real server, checked
against independent references (tiny model, CPU, fp32).

References:
* losses: the spec's §4 formulas in float64 numpy, applied to the logprobs ``forward``
  returned for the same datums;
* ``forward_backward_custom`` / Adam: a plain Hugging Face copy of the tiny model
  (``build_tiny_model``) with the server's LoRA checkpoint merged as ``W + s·B@A``,
  differentiated with plain autograd and stepped with ``torch.optim.AdamW``;
* sampling: the same plain model's logits (base model) or ``forward`` (adapters).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
import torch

import tinker
from tinker_server.engine.tiny import TINY_MAX_CONTEXT, build_tiny_model

from .conftest import TINY_MODEL, Server, datum, expect_error

safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB = 512
PROMPT = [5, 17, 42, 99, 7, 3, 250, 31]
RL_LOSSES = ("importance_sampling", "ppo", "cispo", "dro")


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def msc(server: Server) -> Iterator[tinker.ServiceClient]:
    """One client (tenant) shared by the module's read-only tests."""
    client = tinker.ServiceClient(base_url=server.url, api_key="e2e-semantics")
    yield client
    client.holder.close()


@pytest.fixture(scope="module")
def loss_tc(msc: tinker.ServiceClient) -> tinker.TrainingClient:
    """A run that is never stepped: its forward logprobs stay fixed (B = 0, the base model)."""
    return msc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=3)


@pytest.fixture(scope="module")
def base_sampler(msc: tinker.ServiceClient) -> tinker.SamplingClient:
    return msc.create_sampling_client(base_model=TINY_MODEL)


@pytest.fixture(scope="module")
def plain_model() -> torch.nn.Module:
    """The tiny model as plain Hugging Face, no LoRA wrapping, no engine."""
    return build_tiny_model()


@pytest.fixture(scope="module")
def tokenizer(server: Server) -> Any:
    from transformers import AutoTokenizer

    found = sorted(server.home.glob("models/*tiny*/tokenizer"))
    assert found, f"no tiny tokenizer under {server.home}/models"
    return AutoTokenizer.from_pretrained(str(found[0]))


def rl_datum(tokens: list[int], logprobs: np.ndarray, advantages: np.ndarray) -> tinker.Datum:
    n = len(tokens) - 1
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
            "logprobs": tinker.TensorData(data=logprobs.astype(np.float32).tolist(), dtype="float32", shape=[n]),
            "advantages": tinker.TensorData(data=advantages.astype(np.float32).tolist(), dtype="float32", shape=[n]),
        },
    )


def random_tokens(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(0, VOCAB, n).tolist()


def lp_arrays(out: tinker.ForwardBackwardOutput) -> list[np.ndarray]:
    return [np.asarray(o["logprobs"].data, dtype=np.float64) for o in out.loss_fn_outputs]


def checkpoint_tensors(
    server: Server, tc: tinker.TrainingClient, name: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Save the run's weights and read the PEFT checkpoint the server wrote."""
    path = tc.save_state(name).result(timeout=60).path
    run_id, kind, ckpt = path.removeprefix("tinker://").split("/")
    directory = server.settings.checkpoints_dir / run_id / kind / ckpt
    weights = safetensors_torch.load_file(str(directory / "adapter_model.safetensors"))
    config = json.loads((directory / "adapter_config.json").read_text())
    return weights, config


class MergedModel:
    """``plain_model`` with LoRA leaves ``A``, ``B`` merged into the targeted weights."""

    def __init__(self, model: torch.nn.Module, weights: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        self.model = model
        self.scaling = float(config["lora_alpha"]) / float(config["r"])
        self.leaves = {k: v.detach().clone().double().float().requires_grad_(True) for k, v in weights.items()}
        self.paths = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in weights})

    def params(self) -> dict[str, torch.Tensor]:
        base = dict(self.model.named_parameters())
        return {
            f"{p}.weight": base[f"{p}.weight"]
            + self.scaling
            * (self.leaves[f"base_model.model.{p}.lora_B.weight"] @ self.leaves[f"base_model.model.{p}.lora_A.weight"])
            for p in self.paths
        }

    def logprobs(self, d: tinker.Datum) -> torch.Tensor:
        tokens = torch.tensor([d.model_input.to_ints()])
        logits = torch.func.functional_call(self.model, self.params(), (tokens,)).logits[0]
        targets = torch.tensor(d.loss_fn_inputs["target_tokens"].data)
        return torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]


def assert_close_rel(actual: float, expected: float, scale: float, rel: float = 1e-5) -> None:
    assert abs(actual - expected) <= rel * max(abs(expected), scale, 1e-6), (actual, expected, scale)


# -- losses ---------------------------------------------------------------------------------


def reference_loss(
    loss: str, lp: np.ndarray, inputs: dict[str, np.ndarray], cfg: dict[str, float]
) -> tuple[float, float]:
    """Spec §4 loss (float64) and the sum of the absolute values of its terms (a scale)."""
    if loss == "cross_entropy":
        terms = -inputs["weights"] * lp
    else:
        old, adv = inputs["logprobs"], inputs["advantages"]
        ratio = np.exp(lp - old)
        if loss == "importance_sampling":
            terms = -ratio * adv
        elif loss == "ppo":
            low, high = cfg.get("clip_low_threshold", 0.8), cfg.get("clip_high_threshold", 1.2)
            terms = -np.minimum(ratio * adv, np.clip(ratio, low, high) * adv)
        elif loss == "cispo":
            low, high = cfg.get("clip_low_threshold", 0.0), cfg.get("clip_high_threshold", 4.0)
            terms = -np.clip(ratio, low, high) * lp * adv
        elif loss == "dro":
            beta = cfg.get("beta", 0.05)
            terms = -(lp * adv - 0.5 * beta * (lp - old) ** 2)
        else:
            raise AssertionError(loss)
    return float(terms.sum()), float(np.abs(terms).sum())


LOSS_CASES = [
    ("cross_entropy", None),
    ("importance_sampling", None),
    ("ppo", None),
    ("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.05}),
    ("cispo", None),
    ("cispo", {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3}),
    ("dro", None),
    ("dro", {"beta": 0.7}),
]


@pytest.mark.parametrize(
    ("loss", "config"), LOSS_CASES, ids=[f"{name}-{'cfg' if c else 'default'}" for name, c in LOSS_CASES]
)
def test_loss_value_and_logprobs_match_the_spec_formulas(
    loss_tc: tinker.TrainingClient, loss: str, config: dict[str, float] | None
) -> None:
    rng = np.random.default_rng(sum(map(ord, loss)) + (7 if config else 0))
    seqs = [random_tokens(rng, n) for n in (9, 14, 6)]
    base = lp_arrays(loss_tc.forward([datum(s) for s in seqs], "cross_entropy").result(timeout=60))
    data: list[tinker.Datum] = []
    inputs: list[dict[str, np.ndarray]] = []
    for seq, lp in zip(seqs, base, strict=False):
        n = len(lp)
        adv = rng.normal(0.0, 1.0, n)
        adv[0], adv[1] = -abs(adv[0]) - 0.5, abs(adv[1]) + 0.5  # both signs
        if loss == "cross_entropy":
            w = rng.normal(0.0, 1.0, n)
            w[0] = -1.5  # negative weights must count
            inputs.append({"weights": w.astype(np.float32).astype(np.float64)})
            data.append(datum(seq, w.astype(np.float32).tolist()))
        else:
            # sampler logprobs off by up to ±0.6 nats: ratios from 0.55 to 1.8, clipped on both sides
            old = lp + rng.uniform(-0.6, 0.6, n)
            inputs.append(
                {
                    "logprobs": old.astype(np.float32).astype(np.float64),
                    "advantages": adv.astype(np.float32).astype(np.float64),
                }
            )
            data.append(rl_datum(seq, old, adv))
    if loss in ("ppo", "cispo"):
        low, high = (config or {}).get("clip_low_threshold", 0.8), (config or {}).get("clip_high_threshold", 1.2)
        ratios = np.exp(np.concatenate(base) - np.concatenate([i["logprobs"] for i in inputs]))
        if loss == "ppo" or config:
            assert (ratios < low).any() and (ratios > high).any(), "the inputs must exercise both clips"

    fb = loss_tc.forward_backward(data, loss, config).result(timeout=60)  # type: ignore[arg-type]
    fwd = loss_tc.forward(data, loss, config).result(timeout=60)  # type: ignore[arg-type]
    expected, scale = 0.0, 0.0
    for lp, inp in zip(base, inputs, strict=False):
        value, mag = reference_loss(loss, lp, inp, config or {})
        expected += value
        scale += mag
    for out in (fb, fwd):
        assert out.loss_fn_output_type == loss
        assert set(out.metrics) >= {"loss:sum"}
        assert all(k.count(":") == 1 for k in out.metrics)
        assert_close_rel(out.metrics["loss:sum"], expected, scale)
        assert len(out.loss_fn_outputs) == len(data)
        for got, ref in zip(lp_arrays(out), base, strict=False):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("loss", "drop", "needle"),
    [
        ("ppo", "advantages", "advantages"),
        ("importance_sampling", "logprobs", "logprobs"),
        ("dro", "target_tokens", "target_tokens"),
    ],
)
def test_missing_loss_input_is_a_bad_request_naming_it(
    loss_tc: tinker.TrainingClient, loss: str, drop: str, needle: str
) -> None:
    d = rl_datum([1, 2, 3, 4, 5], np.full(4, -6.0), np.ones(4))
    bad = tinker.Datum(
        model_input=d.model_input, loss_fn_inputs={k: v for k, v in d.loss_fn_inputs.items() if k != drop}
    )
    expect_error(tinker.BadRequestError, lambda: loss_tc.forward_backward([bad], loss).result(timeout=30), needle)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["weights", "target_tokens"])
def test_misshaped_loss_input_is_a_bad_request_naming_it(loss_tc: tinker.TrainingClient, key: str) -> None:
    d = datum([1, 2, 3, 4, 5, 6])
    short = {
        "weights": tinker.TensorData(data=[1.0, 1.0, 1.0], dtype="float32", shape=[3]),
        "target_tokens": tinker.TensorData(data=[2, 3], dtype="int64", shape=[2]),
    }[key]
    bad = tinker.Datum(model_input=d.model_input, loss_fn_inputs={**d.loss_fn_inputs, key: short})
    expect_error(
        tinker.BadRequestError, lambda: loss_tc.forward_backward([bad], "cross_entropy").result(timeout=30), key
    )
    wrong_shape = tinker.TensorData(data=[1.0] * 5, dtype="float32", shape=[2, 3])  # 6 declared, 5 sent
    bad2 = tinker.Datum(model_input=d.model_input, loss_fn_inputs={**d.loss_fn_inputs, "weights": wrong_shape})
    expect_error(tinker.BadRequestError, lambda: loss_tc.forward([bad2], "cross_entropy").result(timeout=30), "weights")


CONFIG_CASES = [("ppo", "clip_epsilon"), ("dro", "clip_high_threshold"), ("cross_entropy", "beta")]


def _config_datum(loss: str) -> tinker.Datum:
    return datum([1, 2, 3, 4]) if loss == "cross_entropy" else rl_datum([1, 2, 3, 4], np.full(3, -6.0), np.ones(3))


@pytest.mark.parametrize(("loss", "key"), CONFIG_CASES)
def test_unknown_loss_fn_config_key_is_a_user_error_naming_it(
    loss_tc: tinker.TrainingClient, loss: tinker.types.LossFnType, key: str
) -> None:
    d = _config_datum(loss)
    err = expect_error(
        (tinker.BadRequestError, tinker.RequestFailedError),
        lambda: loss_tc.forward_backward([d], loss, {key: 0.2}).result(timeout=30),
        key,
    )
    if isinstance(err, tinker.RequestFailedError):
        assert err.category == "user"
    assert loss_tc.forward([d], loss).result(timeout=30).metrics["loss:sum"] != 0


@pytest.mark.parametrize(("loss", "key"), CONFIG_CASES)
def test_unknown_loss_fn_config_key_is_a_4xx_naming_it(
    loss_tc: tinker.TrainingClient, loss: tinker.types.LossFnType, key: str
) -> None:
    d = _config_datum(loss)
    expect_error(
        tinker.BadRequestError, lambda: loss_tc.forward_backward([d], loss, {key: 0.2}).result(timeout=30), key
    )


def test_datum_longer_than_the_context_is_a_4xx(loss_tc: tinker.TrainingClient) -> None:
    tokens = [(i * 13) % VOCAB for i in range(TINY_MAX_CONTEXT + 2)]  # model input: context + 1 tokens
    expect_error(
        tinker.BadRequestError,
        lambda: loss_tc.forward_backward([datum(tokens)], "cross_entropy").result(timeout=30),
        str(TINY_MAX_CONTEXT + 1),
        "context",
    )
    assert loss_tc.forward([datum(tokens[: TINY_MAX_CONTEXT + 1])], "cross_entropy").result(timeout=60).loss_fn_outputs


# -- forward_backward_custom ------------------------------------------------------------------

DPO_BETA = 0.1
ADAM = {"learning_rate": 0.02, "beta1": 0.9, "beta2": 0.95, "eps": 1e-4}


def dpo_pairs(prompt_len: int = 5) -> tuple[list[tinker.Datum], list[int]]:
    """Two (chosen, rejected) pairs: shared prompt, different responses; weights mask the response."""
    rng = np.random.default_rng(2024)
    data = []
    for _ in range(2):
        prompt = random_tokens(rng, prompt_len)
        for _ in ("chosen", "rejected"):
            resp = random_tokens(rng, int(rng.integers(4, 8)))
            tokens = prompt + resp
            weights = [0.0] * (prompt_len - 1) + [1.0] * len(resp)
            data.append(datum(tokens, weights))
    return data, list(range(0, len(data), 2))


def dpo_loss_fn(
    ref_sums: list[float],
) -> Callable[[list[tinker.Datum], list[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]:
    """DPO: -log σ(β[(π_c - ref_c) - (π_r - ref_r)]) summed over pairs (datums 2i, 2i+1)."""

    def loss_fn(data: list[tinker.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        sums = [
            (lp * torch.tensor(d.loss_fn_inputs["weights"].data)).sum() for d, lp in zip(data, logprobs, strict=False)
        ]
        total = torch.zeros(())
        for i in range(0, len(sums), 2):
            margin = (sums[i] - ref_sums[i]) - (sums[i + 1] - ref_sums[i + 1])
            total = total - torch.nn.functional.logsigmoid(DPO_BETA * margin)
        return total, {"dpo_loss": total.detach().item()}

    return loss_fn


def reference_dpo_run(
    model: torch.nn.Module,
    init: dict[str, torch.Tensor],
    config: dict[str, Any],
    data: list[tinker.Datum],
    ref_sums: list[float],
    steps: int,
) -> tuple[MergedModel, list[float]]:
    """The same DPO steps with plain autograd on the plain model, and torch's AdamW."""
    ref = MergedModel(model, init, config)
    opt = torch.optim.AdamW(
        list(ref.leaves.values()),
        lr=ADAM["learning_rate"],
        betas=(ADAM["beta1"], ADAM["beta2"]),
        eps=ADAM["eps"],
        weight_decay=0.0,
    )
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = dpo_loss_fn(ref_sums)(data, [ref.logprobs(d) for d in data])
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    return ref, losses


def check_dpo_against_reference(
    server: Server,
    tc: tinker.TrainingClient,
    plain_model: torch.nn.Module,
    init: dict[str, torch.Tensor],
    config: dict[str, Any],
    data: list[tinker.Datum],
    ref_sums: list[float],
    losses: list[float],
    after: tuple[dict[str, torch.Tensor], Any],
    final_lp: list[np.ndarray],
) -> None:
    ref, ref_losses = reference_dpo_run(plain_model, init, config, data, ref_sums, steps=len(losses))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    weights, _ = after
    assert weights.keys() == ref.leaves.keys()
    moved = 0
    for key, value in ref.leaves.items():
        delta_ref = (value.detach() - init[key]).abs().max().item()
        moved += delta_ref > 0
        torch.testing.assert_close(weights[key], value.detach(), rtol=0, atol=2e-6 + 1e-3 * delta_ref, msg=key)
    assert moved == len(ref.leaves), "two steps move every A and B"
    with torch.no_grad():
        for d, got in zip(data, final_lp, strict=False):
            np.testing.assert_allclose(got, ref.logprobs(d).double().numpy(), rtol=1e-5, atol=1e-5)


def test_forward_backward_custom_dpo_equals_plain_autograd(
    server: Server, sc: tinker.ServiceClient, plain_model: torch.nn.Module
) -> None:
    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=21)
    init, config = checkpoint_tensors(server, tc, "init")
    data, _ = dpo_pairs()
    start = lp_arrays(tc.forward(data, "cross_entropy").result(timeout=60))
    ref_sums = [
        float((lp * np.asarray(d.loss_fn_inputs["weights"].data)).sum()) - 0.3 * (i % 2)
        for i, (d, lp) in enumerate(zip(data, start, strict=False))
    ]
    losses = []
    for _ in range(2):
        out = tc.forward_backward_custom(data, dpo_loss_fn(ref_sums)).result(timeout=60)
        assert "dpo_loss" in out.metrics and "loss:sum" in out.metrics
        losses.append(out.metrics["dpo_loss"])
        metrics = tc.optim_step(tinker.AdamParams(**ADAM)).result(timeout=60).metrics or {}
        assert metrics["learning_rate:mean"] == pytest.approx(ADAM["learning_rate"])
    final = lp_arrays(tc.forward(data, "cross_entropy").result(timeout=60))
    check_dpo_against_reference(
        server, tc, plain_model, init, config, data, ref_sums, losses, checkpoint_tensors(server, tc, "after"), final
    )


def test_forward_backward_custom_async_dpo_equals_plain_autograd(
    server: Server, sc: tinker.ServiceClient, plain_model: torch.nn.Module
) -> None:
    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=22)
    init, config = checkpoint_tensors(server, tc, "init")
    data, _ = dpo_pairs(prompt_len=4)

    async def run() -> tuple[list[float], list[float], list[np.ndarray]]:
        start = lp_arrays(await (await tc.forward_async(data, "cross_entropy")))
        ref_sums = [
            float((lp * np.asarray(d.loss_fn_inputs["weights"].data)).sum()) + 0.2 * (i % 2)
            for i, (d, lp) in enumerate(zip(data, start, strict=False))
        ]
        losses = []
        for _ in range(2):
            out = await (await tc.forward_backward_custom_async(data, dpo_loss_fn(ref_sums)))
            losses.append(out.metrics["dpo_loss"])
            await (await tc.optim_step_async(tinker.AdamParams(**ADAM)))
        final = lp_arrays(await (await tc.forward_async(data, "cross_entropy")))
        return ref_sums, losses, final

    ref_sums, losses, final = asyncio.run(run())
    check_dpo_against_reference(
        server, tc, plain_model, init, config, data, ref_sums, losses, checkpoint_tensors(server, tc, "after"), final
    )


# -- Adam extensions and LoRA config -----------------------------------------------------------


def _one_step(
    sc: tinker.ServiceClient, server: Server, params: tinker.AdamParams, name: str, *, seed: int = 5, **lora: Any
) -> tuple[dict[str, float], dict[str, torch.Tensor], dict[str, torch.Tensor], list[np.ndarray]]:
    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=seed, **lora)
    init, _ = checkpoint_tensors(server, tc, f"{name}-init")
    data = [datum([(7 * i + 3) % VOCAB for i in range(12)]), datum([(11 * i + 40) % VOCAB for i in range(9)])]
    tc.forward_backward(data, "cross_entropy").result(timeout=60)
    metrics = tc.optim_step(params).result(timeout=60).metrics or {}
    after, _ = checkpoint_tensors(server, tc, f"{name}-after")
    return metrics, init, after, lp_arrays(tc.forward(data, "cross_entropy").result(timeout=60))


def _delta_norm(init: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(after[k] - init[k]) for k in init])))


def test_adam_weight_decay_and_grad_clip_change_the_update(sc: tinker.ServiceClient, server: Server) -> None:
    # A large eps makes the first Adam update lr·g/(|g|+eps) ≈ lr·g/eps, proportional to the (clipped) gradient.
    plain_m, init, plain_w, plain_lp = _one_step(sc, server, tinker.AdamParams(learning_rate=0.5, eps=100.0), "plain")
    for key in ("grad_norm:mean", "learning_rate:mean"):
        assert key in plain_m, plain_m
    assert all(k.count(":") == 1 for k in plain_m)
    assert plain_m["learning_rate:mean"] == pytest.approx(0.5)
    norm = plain_m["grad_norm:mean"]
    assert norm > 0

    clip_m, init2, clip_w, clip_lp = _one_step(
        sc, server, tinker.AdamParams(learning_rate=0.5, eps=100.0, grad_clip_norm=norm / 10), "clip"
    )
    assert all(torch.equal(init[k], init2[k]) for k in init), "same seed, same initial adapter"
    assert clip_m["grad_norm:mean"] == pytest.approx(norm, rel=1e-5), "the metric is the norm before clipping"
    # First step: m̂ = g and √v̂ = |g|, so the update is d = -lr·g/(|g|+eps). Recover g from the
    # unclipped run, scale it by grad_clip_norm / norm, and predict the clipped run's update.
    lr, eps, factor = 0.5, 100.0, (norm / 10) / (norm + 1e-6)
    for key in init:
        d = (plain_w[key] - init[key]).double()
        g = -d * eps / (lr - d.abs())
        expected = -lr * (g * factor) / ((g * factor).abs() + eps)
        torch.testing.assert_close((clip_w[key] - init2[key]).double(), expected, rtol=1e-3, atol=3e-8, msg=key)
    assert _delta_norm(init, clip_w) / _delta_norm(init, plain_w) < 0.2
    assert not np.allclose(np.concatenate(clip_lp), np.concatenate(plain_lp), rtol=0, atol=1e-7)

    _, init3, wd_w, wd_lp = _one_step(
        sc, server, tinker.AdamParams(learning_rate=0.5, eps=100.0, weight_decay=0.2), "wd"
    )
    for key in init3:
        if ".lora_A." in key:  # A has no gradient on the first step (B = 0): only the decay moves it
            torch.testing.assert_close(wd_w[key], init3[key] * (1 - 0.5 * 0.2), rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(plain_w[key], init[key], rtol=0, atol=0)
    assert not np.allclose(np.concatenate(wd_lp), np.concatenate(plain_lp), rtol=0, atol=1e-7)


def test_lora_seed_fixes_the_initial_adapter(sc: tinker.ServiceClient, server: Server) -> None:
    _, init_a, _, lp_a = _one_step(sc, server, tinker.AdamParams(learning_rate=0.01), "a", seed=9)
    _, init_b, _, lp_b = _one_step(sc, server, tinker.AdamParams(learning_rate=0.01), "b", seed=9)
    _, init_c, _, lp_c = _one_step(sc, server, tinker.AdamParams(learning_rate=0.01), "c", seed=10)
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    assert not all(torch.equal(init_a[k], init_c[k]) for k in init_a)
    # B = 0 at the start, so the initial logprobs are the base model's whatever the seed; after
    # one identical step the same seed gives the same logprobs, another seed different ones.
    np.testing.assert_array_equal(np.concatenate(lp_a), np.concatenate(lp_b))
    assert not np.allclose(np.concatenate(lp_a), np.concatenate(lp_c), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("flag", "modules"),
    [
        ("train_mlp", ("gate_proj", "up_proj", "down_proj")),
        ("train_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
        ("train_unembed", ("lm_head",)),
    ],
)
def test_lora_targets_are_honoured(
    sc: tinker.ServiceClient, server: Server, flag: str, modules: tuple[str, ...]
) -> None:
    lora: dict[str, Any] = {flag: False}
    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=1, **lora)
    data = [datum([(7 * i + 3) % VOCAB for i in range(12)])]
    before = tc.forward(data, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    for _ in range(3):
        tc.forward_backward(data, "cross_entropy").result(timeout=60)
        tc.optim_step(tinker.AdamParams(learning_rate=0.02)).result(timeout=60)
    after = tc.forward(data, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    assert after < before, (before, after)

    path = tc.save_weights_for_sampler("targets").result(timeout=60).path
    run_id, kind, name = path.removeprefix("tinker://").split("/")
    directory = server.settings.checkpoints_dir / run_id / kind / name
    keys = safetensors_torch.load_file(str(directory / "adapter_model.safetensors")).keys()
    targets = json.loads((directory / "adapter_config.json").read_text())["target_modules"]
    present = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in keys}
    assert present, keys
    assert not present & set(modules), present
    assert not set(targets) & set(modules), targets
    assert set(targets) == present


# -- sampling ---------------------------------------------------------------------------------


def _sample(
    sampler: tinker.SamplingClient, prompt: list[int] = PROMPT, n: int = 1, **params: Any
) -> tinker.SampleResponse:
    return sampler.sample(tinker.ModelInput.from_ints(prompt), n, tinker.SamplingParams(**params)).result(timeout=60)


def test_seed_determinism_and_num_samples(base_sampler: tinker.SamplingClient) -> None:
    a = _sample(base_sampler, n=3, max_tokens=12, temperature=1.0, seed=11)
    b = _sample(base_sampler, n=3, max_tokens=12, temperature=1.0, seed=11)
    c = _sample(base_sampler, n=3, max_tokens=12, temperature=1.0, seed=12)
    assert len(a.sequences) == 3
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert [s.logprobs for s in a.sequences] == [s.logprobs for s in b.sequences]
    assert [s.tokens for s in a.sequences] != [s.tokens for s in c.sequences]
    assert len({tuple(s.tokens) for s in a.sequences}) > 1, "the samples of one request are independent"
    for s in a.sequences:
        assert s.stop_reason == "length" and len(s.tokens) == 12 and len(s.logprobs or []) == 12


def test_stop_token_id_and_multi_token_stop_string(base_sampler: tinker.SamplingClient, tokenizer: Any) -> None:
    free = _sample(base_sampler, max_tokens=24, temperature=1.0, seed=4).sequences[0].tokens

    j = 5
    by_id = _sample(base_sampler, max_tokens=24, temperature=1.0, seed=4, stop=[free[j]]).sequences[0]
    first = free.index(free[j])
    assert by_id.tokens == free[: first + 1] and by_id.stop_reason == "stop"

    def text(tokens: list[int]) -> str:
        return str(tokenizer.decode(tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    stop = None
    for i in range(3, len(free) - 4):
        candidate = text(free[i : i + 3])
        if "\ufffd" not in candidate and all(candidate not in text([t]) for t in free[i : i + 3]):
            stop = candidate
            break
    assert stop is not None, [text([t]) for t in free]
    end = next(k for k in range(1, len(free) + 1) if stop in text(free[:k]))
    assert stop not in text(free[end - 1 : end]), "the stop string spans several tokens"
    by_text = _sample(base_sampler, max_tokens=24, temperature=1.0, seed=4, stop=stop).sequences[0]
    assert by_text.tokens == free[:end] and by_text.stop_reason == "stop", (stop, end)
    as_list = _sample(base_sampler, max_tokens=24, temperature=1.0, seed=4, stop=["\x00never", stop]).sequences[0]
    assert as_list.tokens == free[:end] and as_list.stop_reason == "stop"


def test_top_k_1_is_greedy_and_max_tokens_is_length(base_sampler: tinker.SamplingClient) -> None:
    greedy = _sample(base_sampler, max_tokens=10, temperature=0.0).sequences[0]
    top1 = _sample(base_sampler, max_tokens=10, temperature=1.0, top_k=1, seed=3).sequences[0]
    top1_hot = _sample(base_sampler, max_tokens=10, temperature=2.5, top_k=1, seed=4).sequences[0]
    assert greedy.stop_reason == "length" and len(greedy.tokens) == 10
    assert top1.tokens == greedy.tokens == top1_hot.tokens
    np.testing.assert_allclose(top1.logprobs or [], greedy.logprobs or [], atol=1e-6)


def _reference_logits(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double()  # (N, V)


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
def test_sampled_logprobs_are_temperature_scaled(
    base_sampler: tinker.SamplingClient, plain_model: torch.nn.Module, temperature: float
) -> None:
    res = _sample(base_sampler, n=2, max_tokens=10, temperature=temperature, seed=8)
    for seq in res.sequences:
        logits = _reference_logits(plain_model, PROMPT + seq.tokens)[len(PROMPT) - 1 : -1]
        ref = torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(seq.tokens)[:, None])[:, 0]
        np.testing.assert_allclose(seq.logprobs or [], ref.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("top_k", "top_p"), [(3, 1.0), (-1, 0.4), (5, 0.6)])
def test_top_k_top_p_never_leave_the_allowed_set(
    base_sampler: tinker.SamplingClient, plain_model: torch.nn.Module, top_k: int, top_p: float
) -> None:
    res = _sample(base_sampler, n=4, max_tokens=8, temperature=1.3, top_k=top_k, top_p=top_p, seed=2)
    for seq in res.sequences:
        logits = _reference_logits(plain_model, PROMPT + seq.tokens)[len(PROMPT) - 1 : -1]
        for pos, tok in enumerate(seq.tokens):
            probs = torch.softmax(logits[pos] / 1.3, -1)
            order = torch.argsort(probs, descending=True)
            allowed = order if top_k < 0 else order[:top_k]
            kept = probs[allowed] / probs[allowed].sum()
            ahead = torch.cumsum(kept, 0) - kept  # mass strictly before each candidate
            allowed = allowed[ahead < top_p + 1e-6]
            assert tok in allowed.tolist(), (pos, tok, allowed.tolist())


def test_prompt_logprobs_and_compute_logprobs_equal_forward(
    sc: tinker.ServiceClient, plain_model: torch.nn.Module
) -> None:
    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=31)
    tokens = [*PROMPT, 300, 12, 77, 5, 140]
    for _ in range(2):  # a trained adapter, so the adapter path is exercised
        tc.forward_backward([datum(tokens)], "cross_entropy").result(timeout=60)
        tc.optim_step(tinker.AdamParams(learning_rate=0.05)).result(timeout=60)
    fwd = lp_arrays(tc.forward([datum(tokens)], "cross_entropy").result(timeout=60))[0]
    sampler = tc.save_weights_and_get_sampling_client()
    prompt = tinker.ModelInput.from_ints(tokens)
    res = sampler.sample(
        prompt, 1, tinker.SamplingParams(max_tokens=1), include_prompt_logprobs=True, topk_prompt_logprobs=3
    ).result(timeout=60)
    assert res.prompt_logprobs is not None and res.topk_prompt_logprobs is not None
    assert len(res.prompt_logprobs) == len(tokens) and res.prompt_logprobs[0] is None
    np.testing.assert_allclose(np.asarray(res.prompt_logprobs[1:], dtype=np.float64), fwd, rtol=0, atol=1e-4)
    assert len(res.topk_prompt_logprobs) == len(tokens) and res.topk_prompt_logprobs[0] is None
    for pos, (pairs, own) in enumerate(zip(res.topk_prompt_logprobs[1:], fwd, strict=False), start=1):
        assert pairs is not None and len(pairs) == 3
        values = [lp for _, lp in pairs]
        assert values == sorted(values, reverse=True)
        assert own <= values[0] + 1e-4
        if tokens[pos] in [t for t, _ in pairs]:
            assert dict(pairs)[tokens[pos]] == pytest.approx(own, abs=1e-4)
    computed = sampler.compute_logprobs(prompt).result(timeout=60)
    assert computed[0] is None
    np.testing.assert_allclose(np.asarray(computed[1:], dtype=np.float64), fwd, rtol=0, atol=1e-4)

    # top-k prompt logprobs of the base model against the plain model's full distribution
    base = sc.create_sampling_client(base_model=TINY_MODEL)
    res = base.sample(
        prompt, 1, tinker.SamplingParams(max_tokens=1), include_prompt_logprobs=True, topk_prompt_logprobs=3
    ).result(timeout=60)
    ref = torch.log_softmax(_reference_logits(plain_model, tokens), -1)[:-1]
    vals, idx = torch.topk(ref, 3, -1)
    for pos, pairs in enumerate(res.topk_prompt_logprobs[1:]):  # type: ignore[index]
        assert [t for t, _ in pairs] == idx[pos].tolist()
        np.testing.assert_allclose([lp for _, lp in pairs], vals[pos].numpy(), atol=1e-4)


def test_sampler_and_trainer_agree_on_sampled_tokens(sc: tinker.ServiceClient) -> None:
    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=41)
    tc.forward_backward([datum([*PROMPT, 1, 2, 3, 4])], "cross_entropy").result(timeout=60)
    tc.optim_step(tinker.AdamParams(learning_rate=0.05)).result(timeout=60)
    sampler = tc.save_weights_and_get_sampling_client()
    res = _sample(sampler, n=3, max_tokens=16, temperature=1.0, seed=6)
    data = [datum(PROMPT + s.tokens) for s in res.sequences]
    fwd = lp_arrays(tc.forward(data, "cross_entropy").result(timeout=60))
    for seq, lp in zip(res.sequences, fwd, strict=False):
        np.testing.assert_allclose(seq.logprobs or [], lp[len(PROMPT) - 1 :], rtol=0, atol=1e-4)


def test_concurrent_samples_with_several_adapters_equal_each_alone(sc: tinker.ServiceClient) -> None:
    samplers = []
    for seed, tokens in ((51, [9, 8, 7, 6, 5, 4]), (52, [100, 200, 300, 400, 500])):
        tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=seed)
        for _ in range(2):
            tc.forward_backward([datum(tokens)], "cross_entropy").result(timeout=60)
            tc.optim_step(tinker.AdamParams(learning_rate=0.02)).result(timeout=60)
        samplers.append(tc.save_weights_and_get_sampling_client())
    samplers.append(sc.create_sampling_client(base_model=TINY_MODEL))
    requests = [
        (s, prompt, tinker.SamplingParams(max_tokens=12, temperature=t, top_k=k, seed=seed))
        for s in samplers
        for prompt, t, k, seed in ((PROMPT, 1.0, -1, 1), (PROMPT[:3], 0.8, 20, 2), (PROMPT[2:], 1.0, -1, 3))
    ]

    def submit(item: tuple[tinker.SamplingClient, list[int], tinker.SamplingParams]) -> Future[tinker.SampleResponse]:
        s, prompt, params = item
        return s.sample(tinker.ModelInput.from_ints(prompt), 2, params)

    alone = [submit(r).result(timeout=60) for r in requests]
    together = [f.result(timeout=60) for f in [submit(r) for r in requests]]
    for a, b in zip(alone, together, strict=False):
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
        np.testing.assert_allclose(
            np.asarray([s.logprobs for s in a.sequences], dtype=np.float64),
            np.asarray([s.logprobs for s in b.sequences], dtype=np.float64),
            atol=1e-4,
        )
    # the adapters really differ
    assert len({tuple(a.sequences[0].tokens) for a in alone[0::3]}) == 3


def test_sample_async_matches_sync(base_sampler: tinker.SamplingClient) -> None:
    params = tinker.SamplingParams(max_tokens=8, temperature=1.0, seed=99, stop=[7])
    sync = base_sampler.sample(tinker.ModelInput.from_ints(PROMPT), 2, params).result(timeout=60)
    asyn = asyncio.run(base_sampler.sample_async(tinker.ModelInput.from_ints(PROMPT), 2, params))
    assert [s.tokens for s in sync.sequences] == [s.tokens for s in asyn.sequences]
    assert [s.stop_reason for s in sync.sequences] == [s.stop_reason for s in asyn.sequences]

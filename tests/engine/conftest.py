"""Fixtures for the engine tests: the tiny model, adapters with random weights, references."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import pytest
import torch

_SRC = pathlib.Path(__file__).resolve().parents[2] / "src"
if str(_SRC) not in sys.path:  # running from a checkout without an installed package
    sys.path.insert(0, str(_SRC))

# The tiny model's ops are far too small to gain from intra-op threads, and with
# OpenMP on a busy 2-core machine every op waits for a descheduled thread.
torch.set_num_threads(1)

from tinker_server.engine import (  # noqa: E402
    TINY_MODEL,
    Engine,
    EngineError,
    LoraSpec,
    SampleOutput,
    TrainDatum,
    TrainOutput,
    load_engine,
)
from tinker_server.engine.tiny import build_tiny_model  # noqa: E402

_Out = TypeVar("_Out", SampleOutput, TrainOutput)


def ok(out: _Out | EngineError) -> _Out:
    """``out``, which must not be an engine error (the test fails showing it otherwise)."""
    assert not isinstance(out, EngineError), out
    return out


def floats(values: Sequence[float | None]) -> list[float]:
    """Logprobs of positions that have one (no ``None`` among them)."""
    assert all(v is not None for v in values), values
    return [v for v in values if v is not None]


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One TINKER_HOME for the session, so the tiny tokenizer is built once."""
    return tmp_path_factory.mktemp("tinker-home")


@pytest.fixture
def engine(home: pathlib.Path) -> Engine:
    return load_engine(TINY_MODEL, home=home)


def randomize_adapter(engine: Engine, adapter_id: str, seed: int, scale: float = 0.05) -> None:
    """Give an adapter random non-zero A and B (a fresh one has B = 0, hence zero A-gradients)."""
    gen = torch.Generator().manual_seed(seed)
    adapter = engine._adapters[adapter_id]
    with torch.no_grad():
        for a, b in adapter.weights.values():
            a.copy_(torch.randn(a.shape, generator=gen) * scale)
            b.copy_(torch.randn(b.shape, generator=gen) * scale)


def adapter_tensors(engine: Engine, adapter_id: str) -> dict[str, torch.Tensor]:
    """PEFT key -> detached copy of each parameter."""
    return {k: p.detach().clone() for k, p in engine._adapters[adapter_id].named_parameters()}


def adapter_grads(engine: Engine, adapter_id: str) -> dict[str, torch.Tensor]:
    return {
        k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for k, p in engine._adapters[adapter_id].named_parameters()
    }


def random_datums(n: int, seed: int, *, lengths=(5, 13), vocab: int = 512, keys=("weights",)) -> list[TrainDatum]:
    """Datums with random tokens/targets and random per-token float inputs."""
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(n):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        inputs: dict[str, np.ndarray] = {"target_tokens": rng.integers(0, vocab, length).astype(np.int64)}
        for key in keys:
            if key == "logprobs":
                inputs[key] = (-rng.uniform(5.5, 7.0, length)).astype(np.float32)
            else:
                inputs[key] = rng.normal(0.0, 1.0, length).astype(np.float32)
        data.append(TrainDatum(tokens=rng.integers(0, vocab, length).tolist(), loss_fn_inputs=inputs))
    return data


class MergedReference:
    """A plain HF copy of the engine's base model with an adapter merged as ``W + s * B @ A``.

    ``model``: a fresh, unwrapped HF model equal to the engine's base (default: the
    tiny Llama). ``A`` and ``B`` are fresh leaf tensors, so plain autograd gives the
    reference gradients; every datum runs alone (no batching, no padding, no routing).
    A tied ``lm_head`` gets its own merged weight; the embedding keeps the base one.
    """

    def __init__(self, engine: Engine, adapter_id: str, model: torch.nn.Module | None = None) -> None:
        self.model = build_tiny_model() if model is None else model
        adapter = engine._adapters[adapter_id]
        self.scaling = adapter.scaling
        self.leaves = {k: p.detach().clone().requires_grad_(True) for k, p in adapter.named_parameters()}
        self.paths = list(adapter.weights)

    def params(self) -> dict[str, torch.Tensor]:
        merged: dict[str, torch.Tensor] = {}
        for path in self.paths:
            a = self.leaves[f"base_model.model.{path}.lora_A.weight"]
            b = self.leaves[f"base_model.model.{path}.lora_B.weight"]
            weight = self.model.get_submodule(path).weight
            assert isinstance(weight, torch.Tensor)
            merged[f"{path}.weight"] = weight + self.scaling * (b @ a)
        return merged

    def merged_model(self) -> torch.nn.Module:
        """``self.model`` with the merged weights written into it as plain parameters (for
        ``generate``); ties between a targeted layer and another module are cut."""
        with torch.no_grad():
            for name, value in self.params().items():
                path, _, attr = name.rpartition(".")
                setattr(self.model.get_submodule(path), attr, torch.nn.Parameter(value.detach().clone()))
        self.paths = []  # the merge is done: params() must not add it again
        return self.model

    def logits(self, tokens: list[int]) -> torch.Tensor:
        """(N,) token ids -> (N, V) logits, teacher-forced."""
        return torch.func.functional_call(
            self.model, self.params(), (torch.tensor([tokens]),), tie_weights=False
        ).logits[0]

    def logprobs(self, datum: TrainDatum) -> torch.Tensor:
        logits = self.logits(datum.tokens)
        targets = torch.as_tensor(np.asarray(datum.loss_fn_inputs["target_tokens"]), dtype=torch.long)
        return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]

    def grads(self) -> dict[str, torch.Tensor]:
        return {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in self.leaves.items()}


def assert_tensors_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], rtol: float = 1e-5) -> None:
    assert ours.keys() == ref.keys()
    for key in ref:
        scale = float(ref[key].abs().max()) or 1.0

        def message(detail: str, key: str = key) -> str:
            return f"{key}: {detail}"

        torch.testing.assert_close(ours[key], ref[key], rtol=rtol, atol=rtol * scale, msg=message)


@pytest.fixture
def lora_spec() -> LoraSpec:
    return LoraSpec(rank=4, seed=7)

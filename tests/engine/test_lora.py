"""The multi-adapter LoRA layer: routing rows to adapters, the base path, no slot leaks."""

from __future__ import annotations

import torch
from torch import nn

from tinker_server.engine.lora import LORA_ALPHA, LoraLinear, Router, attach_lora, new_adapter
from tinker_server.engine.messages import LoraSpec


def _layer() -> tuple[LoraLinear, Router]:
    torch.manual_seed(0)
    router = Router()
    return LoraLinear(nn.Linear(6, 5, bias=False), "q_proj", router), router


def _adapter(layer: LoraLinear, seed: int):
    adapter = new_adapter({"q_proj": layer}, LoraSpec(rank=3, seed=seed), "cpu")
    with torch.no_grad():
        adapter.weights["q_proj"][1].normal_()
    return adapter


def test_rows_are_routed_to_their_adapter() -> None:
    layer, router = _layer()
    a, b = _adapter(layer, 1), _adapter(layer, 2)
    x = torch.randn(4, 2, 6)
    with router.route([a, None, b, a]):
        y = layer(x)
    w = layer.base.weight
    for row, adapter in enumerate([a, None, b, a]):
        expected = x[row] @ w.T
        if adapter is not None:
            A, B = adapter.weights["q_proj"]
            expected = expected + (LORA_ALPHA / 3) * (x[row] @ A.T @ B.T)
        torch.testing.assert_close(y[row], expected)
    # no routing: the plain base layer
    torch.testing.assert_close(layer(x), x @ w.T)


def test_gradients_stay_with_their_adapter() -> None:
    layer, router = _layer()
    a, b = _adapter(layer, 1), _adapter(layer, 2)
    x = torch.randn(3, 6)
    with router.route([a, a, None]):
        layer(x).sum().backward()
    assert all(p.grad is not None for p in a.parameters())
    assert all(p.grad is None for p in b.parameters())
    assert layer.base.weight.grad is not None  # a plain nn.Linear here; the engine freezes its model
    assert router.groups == []


def test_attach_lora_wraps_targets_once_and_keeps_weight_tying() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = nn.Linear(4, 4)
            self.other = nn.Linear(4, 4)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()
            self.embed = nn.Embedding(10, 4)
            self.lm_head = nn.Linear(4, 10, bias=False)
            self.lm_head.weight = self.embed.weight

    model = Model()
    layers = attach_lora(model, Router())
    assert list(layers) == ["block.q_proj", "lm_head"]
    assert isinstance(model.block.other, nn.Linear) and not isinstance(model.block.other, LoraLinear)
    assert model.lm_head.weight is model.embed.weight

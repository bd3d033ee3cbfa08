"""Loss functions, by name (spec section 4).

Every loss is a sum over tokens (and, by concatenation, over datums). A loss
function receives flat 1-D tensors of one length ``N`` (the tokens of one or
more datums, concatenated):

* ``lp``: ``target_logprobs``, log p(target_tokens[i] | tokens[:i+1]), with grad;
* ``inputs``: the datum's ``loss_fn_inputs`` other than ``target_tokens``, float32;
* ``cfg``: ``loss_fn_config`` merged over the loss's defaults;

and returns the scalar loss to minimise. Adding a loss is one function and one
decorator line. Defaults that the public docs leave open (spec section 8.1) are
decided here: ``cispo`` clips the ratio to [0.0, 4.0]; ``dro`` uses ``beta = 0.05``.
``ppo`` and ``cispo`` also accept per-token ``clip_low_threshold`` /
``clip_high_threshold`` inputs (older clients sent them as tensors); per-token
values win over the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["LOSSES", "LossFn", "loss_names"]

Tensor = torch.Tensor
LossCompute = Callable[[Tensor, Mapping[str, Tensor], Mapping[str, float]], Tensor]


@dataclass(frozen=True)
class LossFn:
    """A registered loss: its name, the per-token inputs it needs (besides
    ``target_tokens``), the ones it may take, and its config keys with defaults."""

    name: str
    compute: LossCompute
    required: tuple[str, ...]
    optional: tuple[str, ...]
    config: Mapping[str, float]


LOSSES: dict[str, LossFn] = {}


def loss_names() -> list[str]:
    return list(LOSSES)


def loss(
    name: str,
    *,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    config: Mapping[str, float] | None = None,
) -> Callable[[LossCompute], LossCompute]:
    def register(fn: LossCompute) -> LossCompute:
        LOSSES[name] = LossFn(name, fn, required, optional, dict(config or {}))
        return fn

    return register


def _ratio(lp: Tensor, old_lp: Tensor) -> Tensor:
    return torch.exp(lp - old_lp)


def _clip_bounds(inputs: Mapping[str, Tensor], cfg: Mapping[str, float]) -> tuple[Tensor | float, Tensor | float]:
    low = inputs.get("clip_low_threshold", cfg["clip_low_threshold"])
    high = inputs.get("clip_high_threshold", cfg["clip_high_threshold"])
    return low, high


def _clamp(x: Tensor, low: Tensor | float, high: Tensor | float) -> Tensor:
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        low_t = low if isinstance(low, Tensor) else torch.full_like(x, float(low))
        high_t = high if isinstance(high, Tensor) else torch.full_like(x, float(high))
        return torch.clamp(x, min=low_t, max=high_t)
    return torch.clamp(x, min=float(low), max=float(high))


@loss("cross_entropy", optional=("weights",))
def cross_entropy(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, float]) -> Tensor:
    """``L = -sum(w * lp)``; ``weights`` default to ones and may be any real value."""
    weights = inputs.get("weights")
    if weights is None:
        return -lp.sum()
    return -(weights * lp).sum()


@loss("importance_sampling", required=("logprobs", "advantages"))
def importance_sampling(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, float]) -> Tensor:
    """``r = exp(lp - logprobs)``; ``L = -sum(r * A)``."""
    return -(_ratio(lp, inputs["logprobs"]) * inputs["advantages"]).sum()


@loss(
    "ppo",
    required=("logprobs", "advantages"),
    optional=("clip_low_threshold", "clip_high_threshold"),
    config={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
)
def ppo(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, float]) -> Tensor:
    """``L = -sum(min(r * A, clamp(r, low, high) * A))``."""
    ratio = _ratio(lp, inputs["logprobs"])
    adv = inputs["advantages"]
    low, high = _clip_bounds(inputs, cfg)
    return -torch.minimum(ratio * adv, _clamp(ratio, low, high) * adv).sum()


@loss(
    "cispo",
    required=("logprobs", "advantages"),
    optional=("clip_low_threshold", "clip_high_threshold"),
    config={"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
)
def cispo(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, float]) -> Tensor:
    """``L = -sum(stopgrad(clamp(r, low, high)) * lp * A)``."""
    low, high = _clip_bounds(inputs, cfg)
    weight = _clamp(_ratio(lp, inputs["logprobs"]), low, high).detach()
    return -(weight * lp * inputs["advantages"]).sum()


@loss("dro", required=("logprobs", "advantages"), config={"beta": 0.05})
def dro(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, float]) -> Tensor:
    """``L = -sum(lp * A - beta/2 * (lp - logprobs)^2)``."""
    diff = lp - inputs["logprobs"]
    return -(lp * inputs["advantages"] - 0.5 * cfg["beta"] * diff * diff).sum()

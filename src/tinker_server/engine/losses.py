"""Loss functions, by name (spec section 4).

Every loss is a sum over tokens (and, by concatenation, over datums). A loss
function receives flat 1-D tensors of one length ``N`` (the tokens of one or
more datums, concatenated):

* ``lp``: ``target_logprobs``, log p(target_tokens[i] | tokens[:i+1]), with grad;
* ``inputs``: the datum's ``loss_fn_inputs`` other than ``target_tokens``, float32;
* ``cfg``: ``loss_fn_config`` merged over the loss's defaults;

and returns the scalar loss to minimise. Adding a loss is its signature (inputs,
config keys and defaults) in :data:`.rules.LOSS_SIGNATURES`, which the server checks
requests against without torch, and one function here with the ``@loss(name)``
decorator. Defaults that the public docs leave open (spec section 8.1) are decided
there: ``cispo`` clips the ratio to [0.0, 4.0]; ``dro`` uses ``beta = 0.05``.
``ppo`` and ``cispo`` also accept per-token ``clip_low_threshold`` /
``clip_high_threshold`` inputs (older clients sent them as tensors); per-token
values win over the config.

A loss whose signature has ``per_datum=True`` also receives :class:`Segments`, the
datum each token of the flat tensors belongs to (``gspo`` needs it: its ratio is
one value per sequence). Config values are numbers, or strings for keys whose
default is a string (no built-in loss has one yet); :func:`config_number` reads
a numeric one.

``stable_reinforce`` is not implemented: its public description needs
per-sequence "stability information" recorded by the sampler and does not give
the objective's formula (see docs/losses.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

from .rules import LOSS_SIGNATURES, UNSUPPORTED_LOSSES, ConfigValue, LossSignature

__all__ = ["LOSSES", "UNSUPPORTED_LOSSES", "ConfigValue", "LossFn", "Segments", "config_number", "loss_names"]

Tensor = torch.Tensor
LossCompute = Callable[[Tensor, Mapping[str, Tensor], Mapping[str, ConfigValue]], Tensor]
SegmentedLossCompute = Callable[[Tensor, Mapping[str, Tensor], Mapping[str, ConfigValue], "Segments"], Tensor]
_Compute = TypeVar("_Compute", LossCompute, SegmentedLossCompute)


@dataclass(frozen=True)
class Segments:
    """Datum boundaries of the flat tensors a loss receives.

    ``ids``: (N,) int64, the datum (0 .. ``count`` - 1, in order, contiguous) that
    each token belongs to; ``count``: the number of datums.
    """

    ids: Tensor
    count: int

    @classmethod
    def from_lengths(cls, lengths: list[int], device: torch.device | str | None = None) -> Segments:
        counts = torch.tensor(lengths, dtype=torch.long, device=device)
        ids = torch.repeat_interleave(torch.arange(len(lengths), device=device), counts)
        return cls(ids, len(lengths))


@dataclass(frozen=True)
class LossFn:
    """A registered loss: its name, the per-token inputs it needs (besides
    ``target_tokens``), the ones it may take, and its config keys with defaults.
    ``per_datum``: ``compute`` takes a fourth argument, the :class:`Segments`."""

    name: str
    compute: LossCompute | SegmentedLossCompute
    required: tuple[str, ...]
    optional: tuple[str, ...]
    config: Mapping[str, ConfigValue]
    per_datum: bool = False

    def __call__(
        self, lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, ConfigValue], segments: Segments
    ) -> Tensor:
        """The loss of the flat batch ``lp`` whose datums ``segments`` delimits."""
        if self.per_datum:
            return self.compute(lp, inputs, cfg, segments)  # type: ignore[call-arg]
        return self.compute(lp, inputs, cfg)  # type: ignore[call-arg]


LOSSES: dict[str, LossFn] = {}


def loss_names() -> list[str]:
    return list(LOSSES)


def loss(name: str, **signature: object) -> Callable[[_Compute], _Compute]:
    """Register the computation of the loss ``name``; what it takes (inputs, config keys
    and defaults, ``per_datum``) is its :data:`~.rules.LOSS_SIGNATURES` entry. A loss not
    in that table (an extension, a test) gives its signature here as keyword arguments
    (``required``, ``optional``, ``config``, ``per_datum``), and it is added there."""
    if signature:
        if name in LOSS_SIGNATURES:
            raise ValueError(f"loss {name!r} already has a signature in rules.LOSS_SIGNATURES")
        LOSS_SIGNATURES[name] = LossSignature(name, **signature)  # type: ignore[arg-type]
    sig = LOSS_SIGNATURES[name]

    def register(fn: _Compute) -> _Compute:
        LOSSES[name] = LossFn(name, fn, sig.required, sig.optional, sig.defaults, sig.per_datum)
        return fn

    return register


def unregister(name: str) -> None:
    """Remove a loss added with :func:`loss` and its signature."""
    LOSSES.pop(name, None)
    LOSS_SIGNATURES.pop(name, None)


def config_number(cfg: Mapping[str, ConfigValue], key: str) -> float:
    """A numeric config value (validation has already refused strings for numeric keys)."""
    value = cfg[key]
    if isinstance(value, str):
        raise TypeError(f"loss_fn_config[{key!r}] is a string, not a number")
    return float(value)


def _ratio(lp: Tensor, old_lp: Tensor) -> Tensor:
    return torch.exp(lp - old_lp)


def _clip_bounds(inputs: Mapping[str, Tensor], cfg: Mapping[str, ConfigValue]) -> tuple[Tensor | float, Tensor | float]:
    low = inputs.get("clip_low_threshold", config_number(cfg, "clip_low_threshold"))
    high = inputs.get("clip_high_threshold", config_number(cfg, "clip_high_threshold"))
    return low, high


def _clamp(x: Tensor, low: Tensor | float, high: Tensor | float) -> Tensor:
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        low_t = low if isinstance(low, Tensor) else torch.full_like(x, float(low))
        high_t = high if isinstance(high, Tensor) else torch.full_like(x, float(high))
        return torch.clamp(x, min=low_t, max=high_t)
    return torch.clamp(x, min=float(low), max=float(high))


@loss("cross_entropy")
def cross_entropy(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, ConfigValue]) -> Tensor:
    """``L = -sum(w * lp)``; ``weights`` default to ones and may be any real value."""
    weights = inputs.get("weights")
    if weights is None:
        return -lp.sum()
    return -(weights * lp).sum()


@loss("importance_sampling")
def importance_sampling(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, ConfigValue]) -> Tensor:
    """``r = exp(lp - logprobs)``; ``L = -sum(r * A)``."""
    return -(_ratio(lp, inputs["logprobs"]) * inputs["advantages"]).sum()


@loss("ppo")
def ppo(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, ConfigValue]) -> Tensor:
    """``L = -sum(min(r * A, clamp(r, low, high) * A))``."""
    ratio = _ratio(lp, inputs["logprobs"])
    adv = inputs["advantages"]
    low, high = _clip_bounds(inputs, cfg)
    return -torch.minimum(ratio * adv, _clamp(ratio, low, high) * adv).sum()


@loss("cispo")
def cispo(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, ConfigValue]) -> Tensor:
    """``L = -sum(stopgrad(clamp(r, low, high)) * lp * A)``."""
    low, high = _clip_bounds(inputs, cfg)
    weight = _clamp(_ratio(lp, inputs["logprobs"]), low, high).detach()
    return -(weight * lp * inputs["advantages"]).sum()


@loss("dro")
def dro(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, ConfigValue]) -> Tensor:
    """``L = -sum(lp * A - beta/2 * (lp - logprobs)^2)``."""
    diff = lp - inputs["logprobs"]
    return -(lp * inputs["advantages"] - 0.5 * config_number(cfg, "beta") * diff * diff).sum()


@loss("gspo")
def gspo(lp: Tensor, inputs: Mapping[str, Tensor], cfg: Mapping[str, ConfigValue], segments: Segments) -> Tensor:
    """GSPO, token-level form (the one Tinker documents).

    Per datum ``d``, over its tokens ``M_d`` (``sequence_ratio_mask != 0``; without
    the mask, the tokens with a nonzero advantage): ``log s_d = mean(lp - logprobs)``
    taken without gradient, and ``log s_d = 0`` when ``M_d`` is empty. Token ``t``
    of datum ``d`` has the ratio ``r_t = s_d * exp(lp_t - sg(lp_t))``: value ``s_d``,
    gradient that of its own ``lp_t``. ``L = -sum(min(r * A, clamp(r, low, high) * A))``.
    """
    adv = inputs["advantages"]
    mask = inputs.get("sequence_ratio_mask")
    counted = (mask != 0) if mask is not None else (adv != 0)
    weight = counted.to(lp.dtype)
    log_ratio = (lp.detach() - inputs["logprobs"]) * weight
    sums = torch.zeros(segments.count, dtype=lp.dtype, device=lp.device).index_add_(0, segments.ids, log_ratio)
    sizes = torch.zeros(segments.count, dtype=lp.dtype, device=lp.device).index_add_(0, segments.ids, weight)
    seq_log_ratio = torch.where(sizes > 0, sums / sizes.clamp(min=1.0), torch.zeros_like(sums))
    ratio = torch.exp(seq_log_ratio.index_select(0, segments.ids) + (lp - lp.detach()))
    low, high = config_number(cfg, "clip_low_threshold"), config_number(cfg, "clip_high_threshold")
    return -torch.minimum(ratio * adv, torch.clamp(ratio, min=low, max=high) * adv).sum()

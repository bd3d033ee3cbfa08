"""AdamW for one adapter: decoupled weight decay, bias correction, optional clipping.

Gradients accumulate (sum) over forward_backward calls in the parameters' ``.grad``;
:func:`adamw_step` applies one update from them and clears them. Each adapter
keeps its own step count and moments (``Adapter.optim_state``:
``{peft key: (exp_avg, exp_avg_sq)}``). For parameter ``p`` with gradient ``g``
at step ``t``::

    m = b1 m + (1 - b1) g              v = b2 v + (1 - b2) g^2
    p = p - lr wd p                    (decoupled weight decay)
    p = p - lr (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)

which is what ``torch.optim.AdamW`` computes. A parameter with no gradient
(no forward_backward since the last step) counts as a zero gradient.
"""

from __future__ import annotations

import math

import torch

from .lora import Adapter
from .messages import AdamConfig
from .rules import UNSUPPORTED_OPTIMIZERS, check_adam

__all__ = ["UNSUPPORTED_OPTIMIZERS", "adamw_step"]


@torch.no_grad()
def adamw_step(adapter: Adapter, cfg: AdamConfig) -> dict[str, float]:
    """Apply one AdamW step to ``adapter`` from its accumulated gradients, then zero them.

    Returns metrics: ``grad_norm:mean`` (global L2 norm before clipping),
    ``learning_rate:mean`` and ``step:max`` (the adapter's step count after this one).
    """
    check_adam(cfg)
    named = list(adapter.named_parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in named]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item() if grads else 0.0
    clip = 1.0
    if cfg.grad_clip_norm > 0 and norm > cfg.grad_clip_norm:
        clip = cfg.grad_clip_norm / (norm + 1e-6)

    adapter.optim_step += 1
    t = adapter.optim_step
    lr, b1, b2 = cfg.learning_rate, cfg.beta1, cfg.beta2
    bias1 = 1.0 - b1**t
    bias2 = 1.0 - b2**t
    for (key, p), g in zip(named, grads, strict=True):
        if clip != 1.0:
            g = g * clip
        state = adapter.optim_state.get(key)
        if state is None:
            state = (torch.zeros_like(p), torch.zeros_like(p))
            adapter.optim_state[key] = state
        exp_avg, exp_avg_sq = state
        exp_avg.lerp_(g, 1.0 - b1)
        exp_avg_sq.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        if cfg.weight_decay:
            p.mul_(1.0 - lr * cfg.weight_decay)
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(cfg.eps)
        p.addcdiv_(exp_avg, denom, value=-lr / bias1)
    adapter.zero_grad()
    return {"grad_norm:mean": float(norm), "learning_rate:mean": float(lr), "step:max": float(t)}

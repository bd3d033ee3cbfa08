"""forward / forward_backward: validation, micro-batching, losses, gradients.

Rows (datums) of one or more requests, possibly for different adapters, go
through the base model together. Rows are right-padded; with causal attention
a real token never sees a pad, so no attention mask is needed and every row
computes exactly what it would alone. Rows are packed into micro-batches of at
most ``max_tokens_per_microbatch`` padded tokens (a longer row runs alone); the
loss of a request is a sum over its tokens, so the micro-batches' losses and
gradients simply add up. Gradients accumulate in the adapters' ``.grad``.

Validation is :func:`.rules.check_train_request` (the same function the server
runs at submit time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import rules
from .errors import UserInputError
from .lora import Adapter
from .losses import LOSSES, ConfigValue, LossFn, Segments
from .messages import TrainDatum, TrainOutput
from .models import ModelParts

__all__ = ["PreparedRequest", "prepare_request", "run_requests"]


@dataclass
class Row:
    """One validated datum: ``tokens``, ``targets`` (N,) int64; ``inputs`` (N,) float32 each."""

    tokens: torch.Tensor
    targets: torch.Tensor
    inputs: dict[str, torch.Tensor]

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class PreparedRequest:
    """A validated forward / forward_backward request for one adapter."""

    adapter: Adapter
    loss: LossFn
    config: dict[str, ConfigValue]
    backward: bool
    rows: list[Row]
    loss_sum: float = 0.0
    logprobs: list[np.ndarray | None] = field(default_factory=list)


def resolve_loss(name: object) -> LossFn:
    """The registered loss named ``name`` (:func:`.rules.resolve_loss` checks the name)."""
    return LOSSES[rules.resolve_loss(name).name]


def prepare_request(
    adapter: Adapter,
    data: Sequence[TrainDatum],
    loss_fn: str,
    loss_fn_config: Mapping[str, ConfigValue] | None,
    backward: bool,
    *,
    vocab_size: int,
    max_context: int,
) -> PreparedRequest:
    """Check a request with :func:`.rules.check_train_request` and turn its rows into tensors."""
    signature, config, checked = rules.check_train_request(
        data, loss_fn, loss_fn_config, backward=backward, vocab_size=vocab_size, max_context=max_context
    )
    rows = [
        Row(
            torch.from_numpy(r.tokens),
            torch.from_numpy(r.targets),
            {k: torch.from_numpy(v) for k, v in r.inputs.items()},
        )
        for r in checked
    ]
    return PreparedRequest(adapter, LOSSES[signature.name], config, bool(backward), rows, logprobs=[None] * len(rows))


def _microbatches(rows: list[tuple[int, int, Row]], budget: int) -> list[list[tuple[int, int, Row]]]:
    """Pack ``(request, datum, row)`` into batches of at most ``budget`` padded tokens."""
    ordered = sorted(rows, key=lambda r: (-r[2].length, r[0], r[1]))
    batches: list[list[tuple[int, int, Row]]] = []
    current: list[tuple[int, int, Row]] = []
    for item in ordered:
        width = current[0][2].length if current else item[2].length
        if current and (len(current) + 1) * width > budget:
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


HEAD_BLOCK_TOKENS = 512  # (row, position) cells per lm_head call; bounds the (cells, V) logits temporaries


def _head_blocks(lengths: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Cover each row's first ``lengths[b]`` positions with blocks ``(b0, b1, s, e)`` of at
    most :data:`HEAD_BLOCK_TOKENS` cells: several short rows, or a span of one long row."""
    blocks: list[tuple[int, int, int, int]] = []
    b = 0
    while b < len(lengths):
        if lengths[b] >= HEAD_BLOCK_TOKENS:
            blocks.extend(
                (b, b + 1, s, min(lengths[b], s + HEAD_BLOCK_TOKENS)) for s in range(0, lengths[b], HEAD_BLOCK_TOKENS)
            )
            b += 1
            continue
        end, width = b + 1, lengths[b]
        while end < len(lengths) and (end - b + 1) * max(width, lengths[end]) <= HEAD_BLOCK_TOKENS:
            width = max(width, lengths[end])
            end += 1
        blocks.append((b, end, 0, width))
        b = end
    return blocks


def target_logprobs(
    parts: ModelParts,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    lengths: Sequence[int],
    row_adapters: Sequence[Adapter | None],
) -> list[torch.Tensor]:
    """``tokens``, ``targets``: (B, T) int64, right-padded -> per row (lengths[b],) float32
    ``log p(target | prefix)``.

    The caller routes the rows (``parts.router.route``) around this call and the
    backward pass. Logits are formed block by block (:func:`_head_blocks`), so
    only ``(cells, V)`` logits per block exist at once besides those autograd keeps.
    """
    hidden = parts.decoder(input_ids=tokens, use_cache=False).last_hidden_state  # (B, T, H)
    pieces: list[list[torch.Tensor]] = [[] for _ in lengths]
    for b0, b1, s, e in _head_blocks(lengths):
        with parts.router.route(row_adapters[b0:b1], parts.device):  # type: ignore[attr-defined]
            logits = parts.logits(hidden[b0:b1, s:e])  # (rows, cells, V)
        lp = logits.gather(-1, targets[b0:b1, s:e, None])[..., 0] - torch.logsumexp(logits, dim=-1)
        for k, b in enumerate(range(b0, b1)):
            if lengths[b] > s:
                pieces[b].append(lp[k, : min(e, lengths[b]) - s])
    return [p[0] if len(p) == 1 else torch.cat(p) for p in pieces]


AUTO_CHECKPOINT_TOKENS = 1024  # auto mode: recompute layers for micro-batches larger than this


class LayerCheckpointing:
    """Switchable activation checkpointing of a decoder's layers.

    While ``enabled`` (and autograd is on), each decoder layer keeps only its input
    and is recomputed during backward: about one hidden vector per token and layer
    instead of ~1.4 MB per token for SmolLM2-135M, for roughly a third more compute.
    Routing must stay in place through backward (see :func:`_run_microbatch`).
    """

    def __init__(self, decoder: torch.nn.Module) -> None:
        from torch.utils.checkpoint import checkpoint

        self.enabled = False
        for layer in getattr(decoder, "layers", []):
            original = layer.forward

            def forward(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                if self.enabled and torch.is_grad_enabled():
                    return checkpoint(_original, *args, use_reentrant=False, **kwargs)
                return _original(*args, **kwargs)

            layer.forward = forward  # instance attribute: module paths stay unchanged


def _run_microbatch(
    parts: ModelParts,
    requests: list[PreparedRequest],
    batch: list[tuple[int, int, Row]],
    grad: bool,
    checkpointing: LayerCheckpointing | None,
    checkpoint_above: int | None,
) -> None:
    device = parts.device
    # Rows of one adapter next to each other (padding depends only on the widest row): each
    # LoRA layer then works on consecutive rows per adapter (see lora.LoraLinear).
    first_row: dict[int, int] = {}
    for i, (r, _, _) in enumerate(batch):
        first_row.setdefault(id(requests[r].adapter), i)
    batch = sorted(batch, key=lambda item: (first_row[id(requests[item[0]].adapter)], item[0], item[1]))
    width = max(row.length for _, _, row in batch)
    if checkpointing is not None:
        checkpointing.enabled = grad and checkpoint_above is not None and len(batch) * width > checkpoint_above
    tokens = torch.zeros((len(batch), width), dtype=torch.long)
    targets = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (_, _, row) in enumerate(batch):
        tokens[i, : row.length] = row.tokens
        targets[i, : row.length] = row.targets
    adapters = [requests[r].adapter for r, _, _ in batch]
    lengths = [row.length for _, _, row in batch]
    # The routing stays in place through backward: recomputed (checkpointed) layers need it.
    with parts.router.route(adapters, device), torch.set_grad_enabled(grad):  # type: ignore[attr-defined]
        lp = target_logprobs(parts, tokens.to(device), targets.to(device), lengths, adapters)
        total: torch.Tensor | None = None
        # Rows of one request with the same input keys share one loss call (a
        # datum may omit an optional input such as cross_entropy's weights).
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, (r, _, row) in enumerate(batch):
            groups.setdefault((r, tuple(sorted(row.inputs))), []).append(i)
        for (r, _), positions in groups.items():
            req = requests[r]
            pieces = [lp[i] for i in positions]
            flat = torch.cat(pieces)
            inputs = {
                key: torch.cat([batch[i][2].inputs[key] for i in positions]).to(device)
                for key in batch[positions[0]][2].inputs
            }
            segments = Segments.from_lengths([int(p.shape[0]) for p in pieces], device)
            value = req.loss(flat, inputs, req.config, segments)
            number = float(value.detach())
            if not math.isfinite(number):
                raise UserInputError(
                    f"the {req.loss.name} loss is not finite ({number}); check the loss_fn_inputs "
                    "(e.g. sampler logprobs far below the model's, which overflow the ratio)"
                )
            req.loss_sum += number
            for i, piece in zip(positions, pieces, strict=True):
                req.logprobs[batch[i][1]] = piece.detach().float().cpu().numpy().copy()
            if grad and req.backward:
                total = value if total is None else total + value
        del lp
        if total is not None and total.requires_grad:
            total.backward()


def run_requests(
    parts: ModelParts,
    requests: list[PreparedRequest],
    max_tokens_per_microbatch: int,
    *,
    checkpointing: LayerCheckpointing | None = None,
    checkpoint_above: int | None = None,
) -> list[TrainOutput]:
    """Run every request's rows through the model; backward where asked.

    Rows needing gradients and forward-only rows are batched separately (the
    latter without an autograd graph). Micro-batches of more than
    ``checkpoint_above`` padded tokens recompute their layers in backward
    (``None``: never). Returns one :class:`TrainOutput` per request.
    """
    with_grad = [(r, d, row) for r, req in enumerate(requests) if req.backward for d, row in enumerate(req.rows)]
    no_grad = [(r, d, row) for r, req in enumerate(requests) if not req.backward for d, row in enumerate(req.rows)]
    for rows, grad in ((with_grad, True), (no_grad, False)):
        for batch in _microbatches(rows, max_tokens_per_microbatch):
            _run_microbatch(parts, requests, batch, grad, checkpointing, checkpoint_above)
    outputs = []
    for req in requests:
        outs = [{"logprobs": lp.astype(np.float32, copy=False)} for lp in req.logprobs if lp is not None]
        outputs.append(TrainOutput(loss_fn_outputs=outs, metrics={"loss:sum": float(req.loss_sum)}))
    return outputs

"""forward / forward_backward: validation, micro-batching, losses, gradients.

Rows (datums) of one or more requests, possibly for different adapters, go
through the base model together. Rows are right-padded; with causal attention
a real token never sees a pad, so no attention mask is needed and every row
computes exactly what it would alone. Rows are packed into micro-batches of at
most ``max_tokens_per_microbatch`` padded tokens (a longer row runs alone); the
loss of a request is a sum over its tokens, so the micro-batches' losses and
gradients simply add up. Gradients accumulate in the adapters' ``.grad``.

Validation: every datum needs ``target_tokens`` and the loss's required inputs,
each of the input's length. ``forward_backward`` rejects inputs its loss does not
use; ``forward`` ignores them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import UserInputError
from .lora import Adapter
from .losses import LOSSES, UNSUPPORTED_LOSSES, ConfigValue, LossFn, Segments, config_number
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
    if isinstance(name, str) and name in UNSUPPORTED_LOSSES:
        raise UserInputError(
            f"loss_fn {name!r} is not supported by this server: {UNSUPPORTED_LOSSES[name]}; "
            f"supported: {', '.join(LOSSES)}"
        )
    if not isinstance(name, str) or name not in LOSSES:
        raise UserInputError(f"unknown loss_fn {name!r}; expected one of: {', '.join(LOSSES)}")
    return LOSSES[name]


def resolve_config(loss: LossFn, config: Mapping[str, ConfigValue] | None) -> dict[str, ConfigValue]:
    """``config`` merged over the loss's defaults. A key whose default is a string takes a
    string; every other key takes a finite number (stored as float)."""
    merged = dict(loss.config)
    if config is None:
        return merged
    if not isinstance(config, Mapping):
        raise UserInputError(f"loss_fn_config must be a mapping of names to values, got {type(config).__name__}")
    for key, value in config.items():
        if key not in loss.config:
            expected = ", ".join(loss.config) if loss.config else "none"
            raise UserInputError(f"unknown loss_fn_config key {key!r} for {loss.name}; accepted keys: {expected}")
        if isinstance(loss.config[key], str):
            if not isinstance(value, str):
                raise UserInputError(f"loss_fn_config[{key!r}] must be a string, got {value!r}")
            merged[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise UserInputError(f"loss_fn_config[{key!r}] must be a finite number, got {value!r}")
        merged[key] = float(value)
    if "clip_low_threshold" in merged:
        low, high = config_number(merged, "clip_low_threshold"), config_number(merged, "clip_high_threshold")
        if low > high:
            raise UserInputError(
                f"loss_fn_config clip_low_threshold ({low}) is greater than clip_high_threshold ({high})"
            )
    return merged


def _int_tokens(values: object, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{where} must be a list of integers ({exc})") from None
    if arr.dtype.kind in "iu":
        return arr.reshape(-1).astype(np.int64)
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.reshape(-1).astype(np.int64)  # ints sent as floats
    if arr.size == 0:
        return arr.reshape(-1).astype(np.int64)
    raise UserInputError(f"{where} must be integers, got {arr.dtype} values")


def _check_vocab(ids: np.ndarray, vocab_size: int, where: str) -> None:
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise UserInputError(f"{where} {int(bad[0])} is outside the vocabulary (size {vocab_size})")


def prepare_rows(
    data: Sequence[TrainDatum], loss: LossFn, *, vocab_size: int, max_context: int, strict: bool = True
) -> list[Row]:
    """Validate datums against ``loss`` and the model; raise :class:`UserInputError` if wrong.

    ``strict``: inputs the loss does not use are an error (for forward_backward, where
    they signal a wrong loss choice); otherwise they are ignored (for forward, which
    ``forward_backward_custom`` calls with the user's data unchanged).
    """
    if not isinstance(data, Sequence):
        raise UserInputError(f"data must be a list of datums, got {type(data).__name__}")
    allowed = ("target_tokens", *loss.required, *loss.optional)
    rows: list[Row] = []
    for d, datum in enumerate(data):
        raw_tokens: Any = getattr(datum, "tokens", None)
        try:
            flat = np.ndim(raw_tokens) == 1
        except ValueError:  # ragged nesting
            flat = False
        if not flat:
            raise UserInputError(f"datum {d}: tokens must be a flat list of token ids")
        tokens = _int_tokens(raw_tokens, f"datum {d}: tokens")
        n = int(tokens.shape[0])
        if n == 0:
            raise UserInputError(f"datum {d}: the input has no tokens")
        if n > max_context:
            raise UserInputError(f"datum {d} has {n} tokens, more than the model's context of {max_context}")
        _check_vocab(tokens, vocab_size, f"datum {d}: token id")
        raw = getattr(datum, "loss_fn_inputs", None)
        if not isinstance(raw, Mapping):
            raise UserInputError(f"datum {d}: loss_fn_inputs must be a mapping of names to arrays")
        for key in raw:
            if key not in allowed and strict:
                raise UserInputError(
                    f"datum {d}: loss_fn_inputs key {key!r} is not used by {loss.name}; "
                    f"accepted keys: {', '.join(allowed)}"
                )
        for key in ("target_tokens", *loss.required):
            if key not in raw:
                raise UserInputError(f"datum {d}: missing loss_fn_inputs key {key!r} required by {loss.name}")
        targets = _int_tokens(raw["target_tokens"], f"datum {d}: loss_fn_inputs['target_tokens']")
        if targets.shape[0] != n:
            raise UserInputError(
                f"datum {d}: loss_fn_inputs['target_tokens'] has length {targets.shape[0]} but the input has {n} tokens"
            )
        _check_vocab(targets, vocab_size, f"datum {d}: target token id")
        inputs: dict[str, torch.Tensor] = {}
        for key, value in raw.items():
            if key == "target_tokens" or key not in allowed:
                continue
            inputs[key] = _float_input(value, n, f"datum {d}: loss_fn_inputs[{key!r}]")
        rows.append(Row(torch.from_numpy(tokens), torch.from_numpy(targets), inputs))
    return rows


def _float_input(value: object, n: int, where: str) -> torch.Tensor:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{where} must be an array of numbers ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise UserInputError(f"{where} must be numbers, got {arr.dtype} values")
    arr = arr.reshape(-1)
    if arr.shape[0] != n:
        raise UserInputError(f"{where} has length {arr.shape[0]} but the input has {n} tokens")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise UserInputError(f"{where} contains NaN or infinite values")
    return torch.from_numpy(arr)


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
    loss, config, rows = validate_train_request(
        data, loss_fn, loss_fn_config, backward=backward, vocab_size=vocab_size, max_context=max_context
    )
    return PreparedRequest(adapter, loss, config, bool(backward), rows, logprobs=[None] * len(rows))


def validate_train_request(
    data: Sequence[TrainDatum],
    loss_fn: str,
    loss_fn_config: Mapping[str, ConfigValue] | None,
    *,
    backward: bool,
    vocab_size: int,
    max_context: int,
) -> tuple[LossFn, dict[str, ConfigValue], list[Row]]:
    """Every check of a training request, needing no adapter (so a server can also run it
    when the request is submitted). Returns the loss, its resolved config and the datums'
    rows; raises :class:`UserInputError` naming what is wrong."""
    loss = resolve_loss(loss_fn)
    config = resolve_config(loss, loss_fn_config)
    rows = prepare_rows(data, loss, vocab_size=vocab_size, max_context=max_context, strict=bool(backward))
    return loss, config, rows


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
            blocks.extend((b, b + 1, s, min(lengths[b], s + HEAD_BLOCK_TOKENS))
                          for s in range(0, lengths[b], HEAD_BLOCK_TOKENS))
            b += 1
            continue
        end, width = b + 1, lengths[b]
        while end < len(lengths) and (end - b + 1) * max(width, lengths[end]) <= HEAD_BLOCK_TOKENS:
            width = max(width, lengths[end])
            end += 1
        blocks.append((b, end, 0, width))
        b = end
    return blocks


def target_logprobs(parts: ModelParts, tokens: torch.Tensor, targets: torch.Tensor,
                    lengths: Sequence[int], row_adapters: Sequence[Adapter | None]) -> list[torch.Tensor]:
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


def _run_microbatch(parts: ModelParts, requests: list[PreparedRequest],
                    batch: list[tuple[int, int, Row]], grad: bool,
                    checkpointing: LayerCheckpointing | None, checkpoint_above: int | None) -> None:
    device = parts.device
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
            inputs = {key: torch.cat([batch[i][2].inputs[key] for i in positions]).to(device)
                      for key in batch[positions[0]][2].inputs}
            segments = Segments.from_lengths([int(p.shape[0]) for p in pieces], device)
            value = req.loss(flat, inputs, req.config, segments)
            number = float(value.detach())
            if not math.isfinite(number):
                raise UserInputError(
                    f"the {req.loss.name} loss is not finite ({number}); check the loss_fn_inputs "
                    "(e.g. sampler logprobs far below the model's, which overflow the ratio)"
                )
            req.loss_sum += number
            for i, piece in zip(positions, pieces):
                req.logprobs[batch[i][1]] = piece.detach().float().cpu().numpy().copy()
            if grad and req.backward:
                total = value if total is None else total + value
        del lp
        if total is not None and total.requires_grad:
            total.backward()  # type: ignore[no-untyped-call]


def run_requests(parts: ModelParts, requests: list[PreparedRequest], max_tokens_per_microbatch: int, *,
                 checkpointing: LayerCheckpointing | None = None,
                 checkpoint_above: int | None = None) -> list[TrainOutput]:
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

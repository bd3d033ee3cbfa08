"""Batched sampling with a KV cache, many adapters per batch.

1. Prefill: all jobs' prompts run in one batch, left-padded to the longest,
   each row through its job's adapter; a boolean mask hides the pads and
   ``position_ids`` carry each row's true positions. Prompt logprobs equal a
   teacher-forced forward's to float32 rounding.
2. The prefilled key/value cache rows are repeated, ``num_samples`` rows per job.
3. Decode: one token per step for all unfinished rows together, each row routed
   to its job's adapter. Finished rows leave the batch. Cache layers append in
   place into spare room that grows geometrically (HF's ``DynamicCache`` copies
   the whole cache on every token). Rows whose caches would
   outgrow :data:`MAX_KV_CACHE_BYTES` go to a later batch.

Per row: ``temperature`` (0 = greedy), ``top_k`` (-1 or 0 = off), ``top_p``
(applied after top-k, on the renormalised distribution), a private
``torch.Generator`` seeded from (job seed, sample index), so a seeded job gives
the same tokens whatever else shares the batch. Sampling uses one uniform draw
per step and the inverse CDF of the filtered distribution.

Reported logprobs are those of the temperature-scaled distribution
``log_softmax(logits / T)`` *before* top-k / top-p truncation (for ``T = 0``,
``log_softmax(logits)``). Prompt logprobs are always at temperature 1.

Stopping: a row stops (reason ``"stop"``) right after emitting a token in
``stop_token_ids`` or a token that completes one of ``stop_strings`` in the
decoded text of the generated tokens; that token is included. The EOS token
does not stop generation unless it is in ``stop_token_ids`` (Tinker clients pass
their renderer's stop sequences explicitly). Otherwise a row ends with
``"length"`` after ``max_tokens`` tokens (``None``: up to the context limit, at
most :data:`MAX_TOKENS_WHEN_UNSET`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from .errors import UserInputError
from .lora import Adapter
from .messages import SampledSequence, SampleJob, SampleOutput
from .models import ModelParts

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedTokenizerBase

PromptLogprobs = list[float | None]
TopkPromptLogprobs = list[list[tuple[int, float]] | None]

__all__ = ["MAX_NUM_SAMPLES", "MAX_TOKENS_WHEN_UNSET", "PreparedJob", "prepare_job", "run_jobs"]

MAX_TOKENS_WHEN_UNSET = 1024
MAX_NUM_SAMPLES = 512
PROMPT_LOGPROB_CHUNK = 1024  # prompt positions per lm_head call when computing prompt logprobs
MAX_KV_CACHE_BYTES = 4 * 2**30  # key/value cache of one decode batch; larger requests run in several


@dataclass
class PreparedJob:
    """A validated :class:`SampleJob` (``top_k = 0`` means off)."""

    adapter: Adapter | None
    prompt: list[int]
    num_samples: int
    max_new: int
    temperature: float
    top_k: int
    top_p: float
    seeds: list[int]
    stop_strings: tuple[str, ...]
    stop_ids: frozenset[int]
    prompt_logprobs: bool
    topk_prompt_logprobs: int


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _row_seed(job_seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"{job_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def prepare_job(job: SampleJob, adapter: Adapter | None, *, vocab_size: int, max_context: int) -> PreparedJob:
    """Validate ``job``; raise :class:`UserInputError` naming the offending field."""
    prompt = job.prompt.tolist() if hasattr(job.prompt, "tolist") else job.prompt
    if not isinstance(prompt, Sequence) or isinstance(prompt, (str, bytes)) or not all(_is_int(t) for t in prompt):
        raise UserInputError("prompt must be a list of integer token ids")
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise UserInputError("prompt has no tokens")
    for t in prompt:
        if not 0 <= t < vocab_size:
            raise UserInputError(f"prompt token id {t} is outside the vocabulary (size {vocab_size})")
    if len(prompt) > max_context:
        raise UserInputError(f"prompt has {len(prompt)} tokens, more than the model's context of {max_context}")
    if not _is_int(job.num_samples) or not 1 <= job.num_samples <= MAX_NUM_SAMPLES:
        raise UserInputError(f"num_samples must be an integer from 1 to {MAX_NUM_SAMPLES}, got {job.num_samples!r}")
    room = max_context - len(prompt)
    if job.max_tokens is None:
        max_new = min(room, MAX_TOKENS_WHEN_UNSET)
    else:
        if not _is_int(job.max_tokens) or job.max_tokens < 0:
            raise UserInputError(f"max_tokens must be a non-negative integer, got {job.max_tokens!r}")
        if job.max_tokens > room:
            raise UserInputError(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({job.max_tokens}) exceeds "
                f"the model's context of {max_context}"
            )
        max_new = int(job.max_tokens)
    if not _is_number(job.temperature) or job.temperature < 0:
        raise UserInputError(f"temperature must be a finite number >= 0, got {job.temperature!r}")
    if not _is_int(job.top_k) or job.top_k < -1:
        raise UserInputError(f"top_k must be -1 (off) or a positive integer, got {job.top_k!r}")
    if not _is_number(job.top_p) or not 0 < job.top_p <= 1:
        raise UserInputError(f"top_p must be in (0, 1], got {job.top_p!r}")
    if job.seed is not None and not _is_int(job.seed):
        raise UserInputError(f"seed must be an integer or None, got {job.seed!r}")
    stops = [job.stop_strings] if isinstance(job.stop_strings, str) else list(job.stop_strings or [])
    for s in stops:
        if not isinstance(s, str) or not s:
            raise UserInputError(f"stop strings must be non-empty strings, got {s!r}")
    stop_ids = list(job.stop_token_ids or [])
    for t in stop_ids:
        if not _is_int(t) or not 0 <= t < vocab_size:
            raise UserInputError(f"stop token id {t!r} is outside the vocabulary (size {vocab_size})")
    if not _is_int(job.topk_prompt_logprobs) or not 0 <= job.topk_prompt_logprobs <= vocab_size:
        raise UserInputError(
            f"topk_prompt_logprobs must be an integer from 0 to {vocab_size}, got {job.topk_prompt_logprobs!r}"
        )
    job_seed = int(job.seed) if job.seed is not None else secrets.randbits(63)
    return PreparedJob(
        adapter=adapter,
        prompt=prompt,
        num_samples=int(job.num_samples),
        max_new=max_new,
        temperature=float(job.temperature),
        top_k=max(int(job.top_k), 0),
        top_p=float(job.top_p),
        seeds=[_row_seed(job_seed, i) for i in range(job.num_samples)],
        stop_strings=tuple(stops),
        stop_ids=frozenset(int(t) for t in stop_ids),
        prompt_logprobs=bool(job.prompt_logprobs),
        topk_prompt_logprobs=int(job.topk_prompt_logprobs),
    )


@dataclass
class _Row:
    job: int
    generator: torch.Generator
    position: int  # position id of the next token fed to the model
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop_reason: str | None = None


def _new_cache(parts: ModelParts, room: int) -> DynamicCache:
    """A cache whose layers append in place, reserving at most ``room`` positions ahead."""
    from transformers import DynamicCache

    cache = DynamicCache(config=parts.model.config)
    cache.layers = [_layer_class()(room) for _ in cache.layers]
    return cache


@functools.cache
def _layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class _Layer(DynamicLayer):  # type: ignore[misc]
        """A key/value cache layer that appends each token into room reserved up front.

        HF's ``DynamicLayer`` concatenates the whole cache with the new token on
        every step (a copy of every layer's keys and values per token); this one
        writes each token into a buffer with spare positions (at most ``room``, the
        batch's largest ``max_tokens``, at a time) and exposes ``keys`` / ``values``
        as views of its filled part.
        """

        def __init__(self, room: int) -> None:
            super().__init__()
            self.room = room
            self.key_buffer: torch.Tensor | None = None
            self.value_buffer: torch.Tensor | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.get_seq_length()
            need = length + key_states.shape[-2]
            keys, values = self.key_buffer, self.value_buffer
            if keys is None or values is None or need > keys.shape[-2]:
                # Room for the next tokens, growing geometrically (a few copies per
                # sequence), never more than the batch's max_tokens: a batch of rows that
                # mostly stop early must not reserve max_tokens for each of them.
                capacity = need + min(self.room, max(64, need // 2))
                keys = _grown(keys, key_states, capacity, length)
                values = _grown(values, value_states, capacity, length)
                self.key_buffer, self.value_buffer = keys, values
            keys[:, :, length:need].copy_(key_states)
            values[:, :, length:need].copy_(value_states)
            self.keys, self.values = keys[:, :, :need], values[:, :, :need]
            return self.keys, self.values

        def select_rows(self, keep: torch.Tensor) -> None:
            if self.key_buffer is None or self.value_buffer is None:
                return
            length = self.get_seq_length()
            self.key_buffer = self.key_buffer.index_select(0, keep)
            self.value_buffer = self.value_buffer.index_select(0, keep)
            self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    return _Layer


def _grown(old: torch.Tensor | None, new: torch.Tensor, capacity: int, length: int) -> torch.Tensor:
    """A (B, H, capacity, D) buffer shaped like ``new`` holding ``old``'s first ``length`` positions."""
    buffer = new.new_empty((new.shape[0], new.shape[1], capacity, new.shape[3]))
    if old is not None and length:
        buffer[:, :, :length].copy_(old[:, :, :length])
    return buffer


def _prefill(
    parts: ModelParts, jobs: list[PreparedJob]
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, list[PromptLogprobs | None], list[TopkPromptLogprobs | None]]:
    """Run all prompts in one left-padded batch, each row through its own adapter.

    Returns (cache with J rows of Pmax positions, valid (J, Pmax) bool mask of real
    positions, last-position logits (J, V), prompt logprobs and top-k prompt logprobs
    per job (``None`` where not asked for)).
    """
    device = parts.device
    lengths = [len(job.prompt) for job in jobs]
    width = max(lengths)
    ids = torch.zeros((len(jobs), width), dtype=torch.long, device=device)
    valid = torch.zeros((len(jobs), width), dtype=torch.bool, device=device)
    for j, job in enumerate(jobs):
        ids[j, width - lengths[j] :] = torch.tensor(job.prompt, dtype=torch.long, device=device)
        valid[j, width - lengths[j] :] = True
    positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
    causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    # Real queries see real keys up to themselves; a padding query sees only itself (never all-masked).
    keys = (causal[None] & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)[None]
    cache = _new_cache(parts, max(job.max_new for job in jobs))
    with parts.router.route([job.adapter for job in jobs], device):  # type: ignore[attr-defined]
        hidden = parts.decoder(
            input_ids=ids,
            attention_mask=_attention_mask(parts, keys[:, None], parts.model.dtype),
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state  # (J, Pmax, H)
        last = parts.logits(hidden[:, -1:])[:, 0]  # (J, V)
    all_lps: list[PromptLogprobs | None] = []
    all_topk: list[TopkPromptLogprobs | None] = []
    for j, job in enumerate(jobs):
        lps: PromptLogprobs = [None]
        topk: TopkPromptLogprobs = [None]
        if job.prompt_logprobs or job.topk_prompt_logprobs:
            offset = width - lengths[j]
            targets = ids[j, offset + 1 :]
            with parts.router.route([job.adapter], device):  # type: ignore[attr-defined]
                for start in range(0, lengths[j] - 1, PROMPT_LOGPROB_CHUNK):
                    stop = min(start + PROMPT_LOGPROB_CHUNK, lengths[j] - 1)
                    logits = parts.logits(hidden[j : j + 1, offset + start : offset + stop])[0]
                    logp = torch.log_softmax(logits, dim=-1)  # (c, V)
                    lps.extend(logp.gather(1, targets[start:stop, None])[:, 0].tolist())
                    if job.topk_prompt_logprobs:
                        vals, idx = torch.topk(logp, job.topk_prompt_logprobs, dim=-1)
                        topk.extend(list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist()))
        all_lps.append(lps if job.prompt_logprobs else None)
        all_topk.append(topk if job.topk_prompt_logprobs else None)
    return cache, valid, last, all_lps, all_topk


def _kv(cache: DynamicCache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys, values)`` of one cache layer, each (B, Hkv, L, D)."""
    entry = cache.layers[layer]
    keys, values = getattr(entry, "keys", None), getattr(entry, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise RuntimeError(f"unsupported key/value cache layer {type(entry).__name__}")
    return keys, values


def _select_rows(cache: DynamicCache, keep: torch.Tensor) -> None:
    for i, layer in enumerate(cache.layers):
        select = getattr(layer, "select_rows", None)
        if select is not None:  # our in-place layers
            select(keep)
            continue
        keys, values = _kv(cache, i)
        setattr(layer, "keys", keys.index_select(0, keep))
        setattr(layer, "values", values.index_select(0, keep))


def _attention_mask(parts: ModelParts, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, Q, L) bool mask (True: query may attend to key) -> the form the model's
    attention implementation takes (bool for sdpa, additive float for eager)."""
    if getattr(parts.model.config, "_attn_implementation", "sdpa") == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def choose_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row.

    ``logits``: (R, V) float32; ``temperature``, ``top_p``: (R,) float; ``top_k``: (R,) int
    (0 = off). Returns ``tokens`` (R,) int64 and their logprobs (R,) under
    ``log_softmax(logits / T)`` (``T = 1`` for greedy rows), before truncation.
    """
    rows, vocab = logits.shape
    greedy = temperature <= 0
    scale = torch.where(greedy, torch.ones_like(temperature), temperature)
    logp = torch.log_softmax(logits / scale[:, None], dim=-1)
    tokens = logits.argmax(dim=-1)
    sampled = (~greedy).nonzero()[:, 0]
    if sampled.numel():
        filtered = logp.index_select(0, sampled)
        k = top_k.index_select(0, sampled)
        if bool((k > 0).any()):
            k = torch.where(k > 0, k, torch.full_like(k, vocab)).clamp(max=vocab)
            kth = torch.topk(filtered, int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
            filtered = filtered.masked_fill(filtered < kth, float("-inf"))
        p = top_p.index_select(0, sampled)
        if bool((p < 1).any()):
            probs = torch.softmax(filtered, dim=-1)
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass strictly ahead of each token
            cut = before >= torch.where(p < 1, p, torch.full_like(p, math.inf))[:, None]
            cut[:, 0] = False
            filtered = filtered.masked_fill(torch.zeros_like(cut).scatter(1, order, cut), float("-inf"))
        probs = torch.softmax(filtered, dim=-1)
        cdf = torch.cumsum(probs, dim=-1)
        u = torch.stack([torch.rand((), generator=generators[int(i)]) for i in sampled]).to(cdf.device)
        pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=vocab - 1)
        allowed = probs.gather(1, pick[:, None])[:, 0] > 0
        if not bool(allowed.all()):  # rounding at the very top of the CDF: take the last allowed token
            last = vocab - 1 - torch.flip(probs > 0, dims=[1]).int().argmax(dim=-1)
            pick = torch.where(allowed, pick, last)
        tokens = tokens.index_put((sampled,), pick)
    return tokens, logp.gather(1, tokens[:, None])[:, 0]


def _stopped_by_string(tokenizer: PreTrainedTokenizerBase, tokens: list[int], stops: tuple[str, ...], window: int) -> bool:
    text = str(tokenizer.decode(tokens[-window:], skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return any(s in text for s in stops)


def kv_bytes_per_token(parts: ModelParts) -> int:
    """Key/value cache bytes one token occupies across all layers."""
    config = parts.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = next(parts.model.parameters()).element_size()
    return int(2 * config.num_hidden_layers * heads * head_dim * itemsize)


def run_jobs(parts: ModelParts, tokenizer: PreTrainedTokenizerBase, jobs: list[PreparedJob],
             max_kv_bytes: int = MAX_KV_CACHE_BYTES) -> list[SampleOutput]:
    """Sample every job. One :class:`SampleOutput` per job, sequences in sample order.

    Rows decode together as long as their key/value caches fit in ``max_kv_bytes``
    (each row may reach prompt + max_tokens tokens); beyond that, jobs (and the
    samples of one large job) are split into consecutive batches. Every row keeps
    its own generator, so the split does not change any row's tokens.
    """
    if not jobs:
        return []
    budget = max(1, max_kv_bytes // kv_bytes_per_token(parts))
    pieces: list[tuple[int, PreparedJob]] = []
    for j, job in enumerate(jobs):
        per_row = len(job.prompt) + job.max_new
        step = max(1, budget // per_row)
        for start in range(0, job.num_samples, step):
            first = start == 0
            pieces.append((j, replace(
                job,
                num_samples=min(step, job.num_samples - start),
                seeds=job.seeds[start : start + step],
                prompt_logprobs=job.prompt_logprobs and first,
                topk_prompt_logprobs=job.topk_prompt_logprobs if first else 0,
            )))
    batches: list[list[tuple[int, PreparedJob]]] = [[]]
    used = 0
    for piece in pieces:
        need = piece[1].num_samples * (len(piece[1].prompt) + piece[1].max_new)
        if batches[-1] and used + need > budget:
            batches.append([])
            used = 0
        batches[-1].append(piece)
        used += need
    merged: list[SampleOutput | None] = [None] * len(jobs)
    for batch in batches:
        for (j, _), out in zip(batch, _run_batch(parts, tokenizer, [piece for _, piece in batch])):
            if merged[j] is None:
                merged[j] = out
            else:
                merged[j].sequences.extend(out.sequences)  # type: ignore[union-attr]
    return merged  # type: ignore[return-value]


def _run_batch(parts: ModelParts, tokenizer: PreTrainedTokenizerBase, jobs: list[PreparedJob]) -> list[SampleOutput]:
    """Sample the jobs with all their rows in one decode batch."""
    with torch.no_grad():
        cache, valid, last_logits, prompt_lps, prompt_topk = _prefill(parts, jobs)
        rows = [
            _Row(job=j, generator=torch.Generator().manual_seed(seed), position=len(job.prompt))
            for j, job in enumerate(jobs)
            for seed in job.seeds
        ]
        if any(job.max_new > 0 for job in jobs):
            _decode(parts, tokenizer, jobs, rows, cache, valid, last_logits)
        else:
            for row in rows:
                row.stop_reason = "length"
    outputs = []
    for j, job in enumerate(jobs):
        seqs = [
            SampledSequence(tokens=r.tokens, logprobs=r.logprobs, stop_reason=r.stop_reason or "length")  # type: ignore[arg-type]
            for r in rows
            if r.job == j
        ]
        outputs.append(SampleOutput(sequences=seqs, prompt_logprobs=prompt_lps[j], topk_prompt_logprobs=prompt_topk[j]))
    return outputs


def _decode(parts: ModelParts, tokenizer: PreTrainedTokenizerBase, jobs: list[PreparedJob], rows: list[_Row],
            cache: DynamicCache, valid: torch.Tensor, last_logits: torch.Tensor) -> None:
    """Decode every row; ``cache``/``valid``/``last_logits`` hold one row per job (from :func:`_prefill`)."""
    device = parts.device
    per_row_job = torch.tensor([row.job for row in rows], dtype=torch.long, device=device)
    _select_rows(cache, per_row_job)  # one cache row per sample
    valid = valid.index_select(0, per_row_job)
    active = list(range(len(rows)))
    logits = last_logits.index_select(0, per_row_job)  # (R, V)
    windows = [max((len(s.encode()) for s in job.stop_strings), default=0) + 2 for job in jobs]

    def row_params(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        js = [jobs[rows[i].job] for i in indices]
        return (
            torch.tensor([j.temperature for j in js], dtype=torch.float32, device=device),
            torch.tensor([j.top_k for j in js], dtype=torch.long, device=device),
            torch.tensor([j.top_p for j in js], dtype=torch.float32, device=device),
        )

    temperature, top_k, top_p = row_params(active)
    while True:
        tokens, lps = choose_tokens(logits, temperature, top_k, top_p, [rows[i].generator for i in active])
        keep: list[int] = []
        for slot, (i, tok, lp) in enumerate(zip(active, tokens.tolist(), lps.tolist())):
            row, job = rows[i], jobs[rows[i].job]
            if job.max_new == 0:
                row.stop_reason = "length"
                continue
            row.tokens.append(tok)
            row.logprobs.append(lp)
            if tok in job.stop_ids or (
                job.stop_strings and _stopped_by_string(tokenizer, row.tokens, job.stop_strings, windows[row.job])
            ):
                row.stop_reason = "stop"
            elif len(row.tokens) >= job.max_new:
                row.stop_reason = "length"
            else:
                keep.append(slot)
        if not keep:
            return
        if len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            _select_rows(cache, index)
            valid = valid.index_select(0, index)
            tokens = tokens.index_select(0, index)
            active = [active[s] for s in keep]
            temperature, top_k, top_p = row_params(active)
        valid = torch.cat([valid, torch.ones((len(active), 1), dtype=torch.bool, device=device)], dim=1)
        positions = torch.tensor([[rows[i].position + len(rows[i].tokens) - 1] for i in active], device=device)
        with parts.router.route([jobs[rows[i].job].adapter for i in active], device):  # type: ignore[attr-defined]
            hidden = parts.decoder(
                input_ids=tokens[:, None],
                attention_mask=_attention_mask(parts, valid[:, None, None, :], _kv(cache, 0)[0].dtype),
                position_ids=positions,
                cache=cache,
                use_cache=True,
            ).last_hidden_state
            logits = parts.logits(hidden[:, -1])

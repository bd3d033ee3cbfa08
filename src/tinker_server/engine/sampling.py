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
``log_softmax(logits)``); ``topk_sample_logprobs`` reports the best pairs of
that same distribution. Prompt-side outputs (prompt logprobs, their top-k,
``target_prompt_logprobs``) are always at temperature 1; ``prompt_alt_tokens``
are draws at the request's temperature. All come from the prefill's hidden states: the unembedding runs only over the
prompt positions some output needs (with ``prompt_logprobs_last_n`` alone, the
last ``n``), :data:`PROMPT_LOGPROB_CHUNK` positions at a time.

Stopping: a row stops (reason ``"stop"``) right after emitting a token in
``stop_token_ids`` or a token that completes one of ``stop_strings`` in the
decoded text of the generated tokens; that token is included. The EOS token
does not stop generation unless it is in ``stop_token_ids`` (Tinker clients pass
their renderer's stop sequences explicitly). Otherwise a row ends with
``"length"`` after ``max_tokens`` tokens (``None``: up to the context limit, at
most :data:`~.rules.MAX_TOKENS_WHEN_UNSET`).

Streaming: a job's ``on_token`` sink hears of each token right after its decode
step (a :class:`TokenEvent`), so a server can send text before the batch ends.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from .errors import UserInputError
from .lora import Adapter
from .messages import SampledSequence, SampleJob, SampleOutput, TokenEvent
from .models import ModelParts
from .rules import check_sample_job

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedTokenizerBase

PromptLogprobs = list[float | None]
TopkPromptLogprobs = list[list[tuple[int, float]] | None]

log = logging.getLogger(__name__)

__all__ = ["PreparedJob", "prepare_job", "run_jobs"]

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
    topk_sample_logprobs: int = 0
    prompt_logprobs_last_n: int | None = None
    target_prompt_logprobs: np.ndarray | None = None  # int64 [P - 1, K], -1 = none
    prompt_alt_tokens_k: int = 0
    on_token: Callable[[TokenEvent], None] | None = None
    first_sample: int = 0  # index in the job of this piece's first sample (see run_jobs)


def _row_seed(job_seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"{job_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def prepare_job(job: SampleJob, adapter: Adapter | None, *, vocab_size: int, max_context: int) -> PreparedJob:
    """Check ``job`` with :func:`.rules.check_sample_job` (raises :class:`UserInputError`
    naming the offending field) and fix each sample's seed."""
    p = check_sample_job(job, vocab_size=vocab_size, max_context=max_context)
    if job.on_token is not None and not callable(job.on_token):
        raise UserInputError(f"on_token must be callable or None, got {job.on_token!r}")
    job_seed = p.seed if p.seed is not None else secrets.randbits(63)
    return PreparedJob(
        adapter=adapter,
        prompt=p.prompt,
        num_samples=p.num_samples,
        max_new=p.max_new,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        seeds=[_row_seed(job_seed, i) for i in range(p.num_samples)],
        stop_strings=p.stop_strings,
        stop_ids=p.stop_ids,
        prompt_logprobs=p.prompt_logprobs,
        topk_prompt_logprobs=p.topk_prompt_logprobs,
        topk_sample_logprobs=p.topk_sample_logprobs,
        prompt_logprobs_last_n=p.prompt_logprobs_last_n,
        target_prompt_logprobs=p.target_prompt_logprobs,
        prompt_alt_tokens_k=p.prompt_alt_tokens_k,
        on_token=job.on_token,
    )


@dataclass
class _Row:
    job: int
    generator: torch.Generator
    position: int  # position id of the next token fed to the model
    sample: int = 0  # index of this row's sample in its job
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    topk: list[list[tuple[int, float]]] = field(default_factory=list)
    stop_reason: Literal["length", "stop"] | None = None


@functools.cache
def _cache_kwarg(decoder_class: type[torch.nn.Module]) -> str:
    """The decoder's keyword for the key/value cache: ``cache`` in recent transformers,
    ``past_key_values`` before (5.5 and older, e.g. beside tinker-cookbook)."""
    parameters = inspect.signature(decoder_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _new_cache(parts: ModelParts, room: int) -> DynamicCache:
    """A cache whose layers append in place, reserving at most ``room`` positions ahead."""
    from transformers import DynamicCache

    cache = DynamicCache(config=parts.model.config)
    cache.layers = [_layer_class()(room) for _ in cache.layers]
    return cache


@functools.cache
def _layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class _Layer(DynamicLayer):
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

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
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


@dataclass
class _PromptOutputs:
    """One job's prompt-side outputs (``None`` where not asked for)."""

    logprobs: PromptLogprobs | None = None
    topk: TopkPromptLogprobs | None = None
    targets: np.ndarray | None = None
    alt: tuple[np.ndarray, np.ndarray] | None = None


def _prefill(
    parts: ModelParts, jobs: list[PreparedJob]
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, list[_PromptOutputs]]:
    """Run all prompts in one left-padded batch, each row through its own adapter.

    Returns (cache with J rows of Pmax positions, valid (J, Pmax) bool mask of real
    positions, last-position logits (J, V), and each job's prompt-side outputs).
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
            # ignore: mypy checks a class object against Hashable through the instance's __hash__
            **{_cache_kwarg(type(parts.decoder)): cache},  # type: ignore[arg-type]
            use_cache=True,
        ).last_hidden_state  # (J, Pmax, H)
        last = parts.logits(hidden[:, -1:])[:, 0]  # (J, V)
    outputs = [
        _prompt_outputs(parts, job, hidden[j, width - lengths[j] :], ids[j, width - lengths[j] :])
        for j, job in enumerate(jobs)
    ]
    return cache, valid, last, outputs


def _prompt_outputs(parts: ModelParts, job: PreparedJob, hidden: torch.Tensor, prompt: torch.Tensor) -> _PromptOutputs:
    """The prompt-side outputs of one job from its prompt's hidden states ``(P, H)``.

    Row ``i`` of the next-token distributions (``i`` in ``0 .. P - 2``) follows
    ``prompt[:i + 1]`` and predicts ``prompt[i + 1]``. Only the rows some output
    needs go through the unembedding.
    """
    count = len(job.prompt) - 1  # next-token distributions inside the prompt
    out = _PromptOutputs()
    per_position = job.prompt_logprobs or job.topk_prompt_logprobs > 0
    first_lp = 0 if job.prompt_logprobs_last_n is None else max(0, count - job.prompt_logprobs_last_n)
    if job.prompt_logprobs:
        out.logprobs = [None] * len(job.prompt)
    if job.topk_prompt_logprobs:
        out.topk = [None] * len(job.prompt)
    targets = job.target_prompt_logprobs
    if targets is not None:
        out.targets = np.zeros(targets.shape, dtype=np.float32)
    k_alt = job.prompt_alt_tokens_k
    if k_alt:
        out.alt = (np.zeros((count, k_alt), dtype=np.int32), np.zeros((count, k_alt), dtype=np.float32))
    whole = targets is not None or k_alt > 0
    # Alternative prompt tokens are draws: seeded from the job, so a seeded request repeats them.
    alt_generator = torch.Generator().manual_seed(job.seeds[0] ^ 0xA17) if k_alt else None
    start = 0 if whole else (first_lp if per_position else count)
    if start >= count:
        return out
    with parts.router.route([job.adapter], parts.device):  # type: ignore[attr-defined]
        for a in range(start, count, PROMPT_LOGPROB_CHUNK):
            b = min(a + PROMPT_LOGPROB_CHUNK, count)
            logp = torch.log_softmax(parts.logits(hidden[None, a:b])[0], dim=-1)  # (b - a, V)
            lo = max(a, first_lp)
            if per_position and lo < b:
                part = logp[lo - a :]
                if out.logprobs is not None:
                    out.logprobs[lo + 1 : b + 1] = part.gather(1, prompt[lo + 1 : b + 1, None])[:, 0].tolist()
                if out.topk is not None:
                    vals, idx = torch.topk(part, job.topk_prompt_logprobs, dim=-1)
                    out.topk[lo + 1 : b + 1] = [
                        list(zip(i, v, strict=True)) for i, v in zip(idx.tolist(), vals.tolist(), strict=True)
                    ]
            if targets is not None and out.targets is not None and targets.shape[1]:
                want = torch.from_numpy(targets[a:b]).to(logp.device)
                got = logp.gather(1, want.clamp(min=0))
                out.targets[a:b] = torch.where(want >= 0, got, torch.zeros_like(got)).cpu().numpy()
            if out.alt is not None and alt_generator is not None:
                ids, lps = _draw_alternatives(logp, job.temperature, k_alt, alt_generator)
                out.alt[0][a:b] = ids
                out.alt[1][a:b] = lps
    return out


def _draw_alternatives(
    logp: torch.Tensor, temperature: float, k: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` tokens drawn independently (with replacement) from each row's next-token
    distribution at ``temperature``, and their logprobs under it. ``logp``: (R, V)
    log-probabilities at temperature 1. Greedy (``temperature = 0``) repeats the most
    likely token, with its temperature-1 logprob, as sampling does."""
    if temperature <= 0:
        ids = logp.argmax(dim=-1, keepdim=True).expand(-1, k)
        return ids.cpu().numpy().astype(np.int32), logp.gather(1, ids).cpu().numpy().astype(np.float32)
    scaled = logp if temperature == 1 else torch.log_softmax(logp / temperature, dim=-1)
    scaled = scaled.float().cpu()
    ids = torch.multinomial(scaled.exp(), k, replacement=True, generator=generator)
    return ids.numpy().astype(np.int32), scaled.gather(1, ids).numpy()


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
        # setattr: the cache's layer types (linear-attention, dummy layers) do not all declare keys/values
        setattr(layer, "keys", keys.index_select(0, keep))  # noqa: B010
        setattr(layer, "values", values.index_select(0, keep))  # noqa: B010


def _sliding_layout(config: object) -> tuple[int | None, bool]:
    """``(window, mixed)`` of a model's attention layers: ``window`` the sliding window
    (``None``: every layer attends to the whole past), ``mixed`` true when only some
    layers slide (``config.layer_types``, e.g. Gemma 2/3), whose decoders then take one
    mask per layer type. Mistral and Phi-3 slide in every layer when ``sliding_window``
    is set and have no ``layer_types``."""
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return None, False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return window, False
    sliding = ["sliding" in str(kind) for kind in layer_types]
    if not any(sliding):
        return None, False
    return window, not all(sliding)


def _attention_mask(
    parts: ModelParts, mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor]:
    """(R, 1, Q, L) bool mask (True: query may attend to key; the Q queries are the last
    Q key positions) -> what the decoder takes: in the form its attention implementation
    wants (bool for sdpa, additive float for eager), restricted to the sliding window
    where layers slide (a key at most ``window - 1`` positions before the query, as HF
    builds it), and one mask per layer type for decoders mixing full and sliding layers."""
    config = parts.model.config
    eager = getattr(config, "_attn_implementation", "sdpa") == "eager"

    def form(m: torch.Tensor) -> torch.Tensor:
        if eager:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, torch.finfo(dtype).min)
        return m

    window, mixed = _sliding_layout(config)
    if window is None:
        return form(mask)
    queries, length = mask.shape[-2], mask.shape[-1]
    q_idx = torch.arange(length - queries, length, device=mask.device)
    k_idx = torch.arange(length, device=mask.device)
    windowed = mask & (k_idx[None, :] > q_idx[:, None] - window)
    if not mixed:
        return form(windowed)
    full = form(mask)
    return {kind: (form(windowed) if "sliding" in str(kind) else full) for kind in set(config.layer_types)}


def scaled_logprobs(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits / T)`` per row, ``T = 1`` for greedy rows (``T <= 0``): (R, V)."""
    scale = torch.where(temperature <= 0, torch.ones_like(temperature), temperature)
    return torch.log_softmax(logits / scale[:, None], dim=-1)


def choose_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row.

    ``logits``: (R, V) float32; ``temperature``, ``top_p``: (R,) float; ``top_k``: (R,) int
    (0 = off). Returns ``tokens`` (R,) int64 and their logprobs (R,) under
    ``log_softmax(logits / T)`` (``T = 1`` for greedy rows), before truncation.
    ``logp``: that distribution when the caller has already computed it
    (:func:`scaled_logprobs`).
    """
    _rows, vocab = logits.shape
    greedy = temperature <= 0
    if logp is None:
        logp = scaled_logprobs(logits, temperature)
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


def _stopped_by_string(
    tokenizer: PreTrainedTokenizerBase, tokens: list[int], stops: tuple[str, ...], window: int
) -> bool:
    text = str(tokenizer.decode(tokens[-window:], skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return any(s in text for s in stops)


def kv_bytes_per_token(parts: ModelParts) -> int:
    """Key/value cache bytes one token occupies across all layers."""
    config = parts.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = next(parts.model.parameters()).element_size()
    return int(2 * config.num_hidden_layers * heads * head_dim * itemsize)


def run_jobs(
    parts: ModelParts,
    tokenizer: PreTrainedTokenizerBase,
    jobs: list[PreparedJob],
    max_kv_bytes: int = MAX_KV_CACHE_BYTES,
) -> list[SampleOutput]:
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
            pieces.append(
                (
                    j,
                    replace(
                        job,
                        num_samples=min(step, job.num_samples - start),
                        seeds=job.seeds[start : start + step],
                        first_sample=job.first_sample + start,
                        prompt_logprobs=job.prompt_logprobs and first,
                        topk_prompt_logprobs=job.topk_prompt_logprobs if first else 0,
                        target_prompt_logprobs=job.target_prompt_logprobs if first else None,
                        prompt_alt_tokens_k=job.prompt_alt_tokens_k if first else 0,
                    ),
                )
            )
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
        for (j, _), out in zip(batch, _run_batch(parts, tokenizer, [piece for _, piece in batch]), strict=True):
            if merged[j] is None:
                merged[j] = out
            else:
                merged[j].sequences.extend(out.sequences)  # type: ignore[union-attr]
    return merged  # type: ignore[return-value]


def _run_batch(parts: ModelParts, tokenizer: PreTrainedTokenizerBase, jobs: list[PreparedJob]) -> list[SampleOutput]:
    """Sample the jobs with all their rows in one decode batch."""
    with torch.no_grad():
        cache, valid, last_logits, prompt_outputs = _prefill(parts, jobs)
        rows = [
            _Row(
                job=j,
                generator=torch.Generator().manual_seed(seed),
                position=len(job.prompt),
                sample=job.first_sample + i,
            )
            for j, job in enumerate(jobs)
            for i, seed in enumerate(job.seeds)
        ]
        if any(job.max_new > 0 for job in jobs):
            _decode(parts, tokenizer, jobs, rows, cache, valid, last_logits)
        else:
            for row in rows:
                row.stop_reason = "length"
    outputs = []
    for j, job in enumerate(jobs):
        seqs = [
            SampledSequence(
                tokens=r.tokens,
                logprobs=r.logprobs,
                stop_reason=r.stop_reason or "length",
                topk_logprobs=r.topk if job.topk_sample_logprobs else None,
            )
            for r in rows
            if r.job == j
        ]
        prompt = prompt_outputs[j]
        outputs.append(
            SampleOutput(
                sequences=seqs,
                prompt_logprobs=prompt.logprobs,
                topk_prompt_logprobs=prompt.topk,
                target_prompt_logprobs=prompt.targets,
                prompt_alt_tokens=prompt.alt,
            )
        )
    return outputs


def _decode(
    parts: ModelParts,
    tokenizer: PreTrainedTokenizerBase,
    jobs: list[PreparedJob],
    rows: list[_Row],
    cache: DynamicCache,
    valid: torch.Tensor,
    last_logits: torch.Tensor,
) -> None:
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
        logp = scaled_logprobs(logits, temperature)
        tokens, lps = choose_tokens(logits, temperature, top_k, top_p, [rows[i].generator for i in active], logp=logp)
        best = _sample_topk(logp, [jobs[rows[i].job].topk_sample_logprobs for i in active])
        keep: list[int] = []
        for slot, (i, tok, lp) in enumerate(zip(active, tokens.tolist(), lps.tolist(), strict=True)):
            row, job = rows[i], jobs[rows[i].job]
            if job.max_new == 0:
                row.stop_reason = "length"
                continue
            row.tokens.append(tok)
            row.logprobs.append(lp)
            if slot in best:
                row.topk.append(best[slot])
            if tok in job.stop_ids or (
                job.stop_strings and _stopped_by_string(tokenizer, row.tokens, job.stop_strings, windows[row.job])
            ):
                row.stop_reason = "stop"
            elif len(row.tokens) >= job.max_new:
                row.stop_reason = "length"
            else:
                keep.append(slot)
            if job.on_token is not None:
                _notify(job, row)
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
                # ignore: mypy checks a class object against Hashable through the instance's __hash__
                **{_cache_kwarg(type(parts.decoder)): cache},  # type: ignore[arg-type]
                use_cache=True,
            ).last_hidden_state
            logits = parts.logits(hidden[:, -1])


def _notify(job: PreparedJob, row: _Row) -> None:
    """Tell ``job.on_token`` of the token ``row`` just appended; a sink that raises is dropped."""
    event = TokenEvent(
        sample=row.sample,
        position=len(row.tokens) - 1,
        token=row.tokens[-1],
        logprob=row.logprobs[-1],
        topk=row.topk[-1] if job.topk_sample_logprobs else None,
        stop_reason=row.stop_reason,
    )
    try:
        job.on_token(event)  # type: ignore[misc]
    except Exception:  # a broken listener must not fail the batch
        log.exception("the on_token sink of a sampling job failed; it gets no more tokens")
        job.on_token = None


def _sample_topk(logp: torch.Tensor, ks: list[int]) -> dict[int, list[tuple[int, float]]]:
    """For each row ``slot`` with ``ks[slot] > 0``: its ``ks[slot]`` best ``(id, logprob)`` pairs."""
    slots = [slot for slot, k in enumerate(ks) if k > 0]
    if not slots:
        return {}
    index = torch.tensor(slots, dtype=torch.long, device=logp.device)
    vals, idx = torch.topk(logp.index_select(0, index), max(ks[slot] for slot in slots), dim=-1)
    return {
        slot: list(zip(i[: ks[slot]], v[: ks[slot]], strict=True))
        for slot, i, v in zip(slots, idx.tolist(), vals.tolist(), strict=True)
    }

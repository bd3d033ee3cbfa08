"""Typed requests and results exchanged with the engine.

Plain dataclasses: the engine's callers (the scheduler, tests) build these; the
engine validates their content and raises :class:`UserInputError` when it is wrong.
Per-token arrays are numpy arrays whose flattened length equals the number of
input tokens ``N``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "AdamConfig",
    "LoraSpec",
    "ModelInfo",
    "SampleJob",
    "SampleOutput",
    "SampledSequence",
    "TokenEvent",
    "TrainDatum",
    "TrainOutput",
]


@dataclass(frozen=True)
class LoraSpec:
    """Shape of a LoRA adapter.

    ``rank`` is r; the scaling is ``LORA_ALPHA / rank`` with ``LORA_ALPHA = 32``.
    ``seed`` fixes the initialisation (same seed, same adapter); ``None`` draws one.
    The ``train_*`` flags pick the targeted linear layers: attention q/k/v/o,
    MLP gate/up/down, and the unembedding (``lm_head``).
    """

    rank: int
    seed: int | None = None
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True


@dataclass
class TrainDatum:
    """One training sequence.

    ``tokens``: the model input, N token ids. ``loss_fn_inputs``: per-token arrays,
    each of flattened shape (N,), e.g. ``target_tokens`` (int), ``weights``,
    ``advantages``, ``logprobs`` (float).
    """

    tokens: list[int]
    loss_fn_inputs: dict[str, np.ndarray]


@dataclass
class TrainOutput:
    """Result of forward / forward_backward.

    ``loss_fn_outputs``: one dict per datum, in input order, holding at least
    ``logprobs`` (float32, shape (N,)). ``metrics``: ``"name:reduction"`` keys,
    e.g. ``"loss:sum"``.
    """

    loss_fn_outputs: list[dict[str, np.ndarray]]
    metrics: dict[str, float]


@dataclass
class AdamConfig:
    """AdamW hyper-parameters for one optimizer step (``grad_clip_norm=0`` = no clipping)."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


@dataclass
class SampleJob:
    """One sampling request: ``num_samples`` continuations of ``prompt``.

    ``adapter_id=None`` samples the base model. ``temperature=0`` is greedy.
    ``top_k=-1`` and ``top_p=1`` switch those filters off. ``max_tokens=None``
    generates until a stop condition, the context limit or the engine's cap
    (:data:`~tinker_server.engine.rules.MAX_TOKENS_WHEN_UNSET`).

    Extra outputs (all off by default; ``P = len(prompt)``):

    * ``prompt_logprobs`` / ``topk_prompt_logprobs``: per prompt position, at T = 1.
      ``prompt_logprobs_last_n=n`` (needs ``prompt_logprobs``) computes both for the
      last ``n`` prompt positions only; earlier positions are ``None``.
    * ``topk_sample_logprobs=k``: per generated token, the ``k`` best
      ``(token_id, logprob)`` pairs of the distribution it was drawn from (the one
      its reported logprob comes from).
    * ``target_prompt_logprobs``: int64 ``[P - 1, K]`` token ids, ``-1`` = none;
      cell ``[i, j]`` asks for ``log p(target[i, j] | prompt[:i + 1])`` at T = 1.
    * ``prompt_alt_tokens_k=k``: for every prompt position ``i + 1``, ``k`` tokens drawn
      independently from the next-token distribution after ``prompt[:i + 1]`` at the
      job's temperature (seeded by the job's seed), and their logprobs under it.

    ``k`` is at most :data:`~tinker_server.engine.rules.MAX_TOPK_LOGPROBS` for
    ``topk_sample_logprobs`` and ``prompt_alt_tokens_k``.

    ``on_token`` (optional) is told of every generated token while the batch decodes,
    as a :class:`TokenEvent`, from the engine's thread. It must be quick and must not
    raise (a sink that raises is not called again for this job); it changes nothing
    in the result.
    """

    adapter_id: str | None
    prompt: list[int]
    num_samples: int = 1
    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    seed: int | None = None
    stop_strings: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0
    prompt_logprobs_last_n: int | None = None
    target_prompt_logprobs: np.ndarray | None = None
    prompt_alt_tokens_k: int = 0
    on_token: Callable[[TokenEvent], None] | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One token just generated for sample ``sample`` of a job, at index ``position`` of
    that sample's sequence; ``logprob`` and ``topk`` as they will appear in the result
    (``topk`` only with ``topk_sample_logprobs``). ``stop_reason`` is set on the sample's
    last token. The events of one sample arrive in position order."""

    sample: int
    position: int
    token: int
    logprob: float
    topk: list[tuple[int, float]] | None = None
    stop_reason: Literal["length", "stop"] | None = None


@dataclass
class SampledSequence:
    """Generated tokens (stop token included), their logprobs and why generation ended.

    ``topk_logprobs`` (when ``topk_sample_logprobs=k`` was asked): one row per generated
    token, its distribution's ``k`` best ``(token_id, logprob)`` pairs, best first."""

    tokens: list[int]
    logprobs: list[float]
    stop_reason: Literal["length", "stop"]
    topk_logprobs: list[list[tuple[int, float]]] | None = None


@dataclass
class SampleOutput:
    """``sequences``: one per sample. ``prompt_logprobs``: one per prompt token, the
    first ``None`` (when requested; with ``prompt_logprobs_last_n=n`` all but the last
    ``n`` are ``None``). ``topk_prompt_logprobs``: per prompt position up to k
    ``(token_id, logprob)`` pairs, best first, ``None`` where ``prompt_logprobs`` is.

    ``target_prompt_logprobs`` (when requested): float32, the request's shape
    ``[P - 1, K]``, the asked logprobs and ``0.0`` where the request cell is ``-1``.
    ``prompt_alt_tokens`` (when ``prompt_alt_tokens_k=k > 0``): ``(ids, logprobs)``,
    int32 and float32, both ``[P - 1, k]``, row ``i`` the ``k`` draws after
    ``prompt[:i + 1]``."""

    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None
    target_prompt_logprobs: np.ndarray | None = None
    prompt_alt_tokens: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """The loaded base model: its public name, architecture (``config.model_type``),
    vocabulary size, context length and a directory with its HF tokenizer files."""

    name: str
    arch: str
    vocab_size: int
    max_context: int
    tokenizer_dir: pathlib.Path

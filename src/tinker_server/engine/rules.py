"""The engine's rules for what a request may ask: limits and validation, in one place.

Torch-free (numpy only), so two processes apply the same functions: the engine when it
runs a command, and the API process when a request is submitted (with the served
model's :class:`~.messages.ModelInfo`), so a bad request is refused with a 400 at
once whether the model is loaded yet or not. Nothing else defines these limits.

Every check raises :class:`~.errors.UserInputError` with a sentence naming the
offending field and the accepted values.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UserInputError
from .messages import AdamConfig, LoraSpec, SampleJob, TrainDatum

__all__ = [
    "LOSS_SIGNATURES",
    "MAX_LORA_RANK",
    "MAX_NUM_SAMPLES",
    "MAX_TOKENS_WHEN_UNSET",
    "MAX_TOPK_LOGPROBS",
    "UNSUPPORTED_LOSSES",
    "UNSUPPORTED_OPTIMIZERS",
    "CheckedRow",
    "ConfigValue",
    "LossSignature",
    "SampleParams",
    "check_adam",
    "check_lora_spec",
    "check_sample_job",
    "check_train_request",
    "known_input_keys",
    "resolve_config",
    "resolve_loss",
]

MAX_LORA_RANK = 512
MAX_NUM_SAMPLES = 512  # samples of one sampling request
MAX_TOKENS_WHEN_UNSET = 1024  # generated tokens when a request sets no max_tokens
# Most (token, logprob) pairs per position for topk_sample_logprobs and prompt_alt_tokens_k
# (also capped by the vocabulary size). topk_prompt_logprobs keeps its older limit, the vocabulary.
MAX_TOPK_LOGPROBS = 20

ConfigValue = float | str


# ---------------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossSignature:
    """What a loss takes: per-token inputs it needs (besides ``target_tokens``), those it
    may take, its config keys with defaults, and whether it works per datum (then it
    receives the datum boundaries). The computation is in :mod:`.losses`."""

    name: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    config: Mapping[str, ConfigValue] | None = None
    per_datum: bool = False

    @property
    def defaults(self) -> dict[str, ConfigValue]:
        return dict(self.config or {})


_CLIP = ("clip_low_threshold", "clip_high_threshold")
_RL = ("logprobs", "advantages")

LOSS_SIGNATURES: dict[str, LossSignature] = {
    sig.name: sig
    for sig in (
        LossSignature("cross_entropy", optional=("weights",)),
        LossSignature("importance_sampling", required=_RL),
        LossSignature("ppo", required=_RL, optional=_CLIP, config={_CLIP[0]: 0.8, _CLIP[1]: 1.2}),
        LossSignature("cispo", required=_RL, optional=_CLIP, config={_CLIP[0]: 0.0, _CLIP[1]: 4.0}),
        LossSignature("dro", required=_RL, config={"beta": 0.05}),
        LossSignature(
            "gspo",
            required=_RL,
            optional=("sequence_ratio_mask",),
            config={_CLIP[0]: 0.8, _CLIP[1]: 1.2},
            per_datum=True,
        ),
    )
}

# Losses the official client can name but this engine does not compute, with the reason
# (resolving one is a UserInputError that says so, rather than "unknown loss").
UNSUPPORTED_LOSSES: dict[str, str] = {
    "stable_reinforce": "its objective is not publicly specified and it needs stability information "
    "recorded by the sampler; train with loss_fn='importance_sampling' (or 'ppo', 'cispo') instead",
}

# Optimizer families the official client can request (create_model's optimizer_config)
# that this engine does not implement, with the reason. AdamW is the only one implemented.
UNSUPPORTED_OPTIMIZERS: dict[str, str] = {
    "dimuon": "its update rule is not publicly specified (only its hyper-parameters are documented)",
}


def known_input_keys() -> tuple[str, ...]:
    """Every per-token input some loss takes, ``target_tokens`` first."""
    keys = ["target_tokens"]
    for sig in LOSS_SIGNATURES.values():
        keys.extend(k for k in (*sig.required, *sig.optional) if k not in keys)
    return tuple(keys)


def resolve_loss(name: object) -> LossSignature:
    if isinstance(name, str) and name in UNSUPPORTED_LOSSES:
        raise UserInputError(
            f"loss_fn {name!r} is not supported by this server: {UNSUPPORTED_LOSSES[name]}; "
            f"supported: {', '.join(LOSS_SIGNATURES)}"
        )
    if not isinstance(name, str) or name not in LOSS_SIGNATURES:
        raise UserInputError(f"unknown loss_fn {name!r}; expected one of: {', '.join(LOSS_SIGNATURES)}")
    return LOSS_SIGNATURES[name]


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def resolve_config(loss: LossSignature, config: Mapping[str, ConfigValue] | None) -> dict[str, ConfigValue]:
    """``config`` merged over the loss's defaults. A key whose default is a string takes a
    string; every other key takes a finite number (stored as float)."""
    defaults = loss.defaults
    merged = dict(defaults)
    if config is None:
        return merged
    if not isinstance(config, Mapping):
        raise UserInputError(f"loss_fn_config must be a mapping of names to values, got {type(config).__name__}")
    for key, value in config.items():
        if key not in defaults:
            expected = ", ".join(defaults) if defaults else "none"
            raise UserInputError(f"unknown loss_fn_config key {key!r} for {loss.name}; accepted keys: {expected}")
        if isinstance(defaults[key], str):
            if not isinstance(value, str):
                raise UserInputError(f"loss_fn_config[{key!r}] must be a string, got {value!r}")
            merged[key] = value
            continue
        if not _finite(value):
            raise UserInputError(f"loss_fn_config[{key!r}] must be a finite number, got {value!r}")
        merged[key] = float(value)
    if _CLIP[0] in merged:
        low, high = float(merged[_CLIP[0]]), float(merged[_CLIP[1]])
        if low > high:
            raise UserInputError(
                f"loss_fn_config clip_low_threshold ({low}) is greater than clip_high_threshold ({high})"
            )
    return merged


# ---------------------------------------------------------------------------------- training


@dataclass
class CheckedRow:
    """One validated datum: ``tokens`` and ``targets`` int64 (N,), ``inputs`` float32 (N,) each."""

    tokens: np.ndarray
    targets: np.ndarray
    inputs: dict[str, np.ndarray]


def _int_tokens(values: object, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{where} must be a list of integers ({exc})") from None
    if arr.dtype.kind in "iu":
        return arr.reshape(-1).astype(np.int64)
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.reshape(-1).astype(np.int64)  # whole numbers sent as floats; fractions are refused
    if arr.size == 0:
        return arr.reshape(-1).astype(np.int64)
    raise UserInputError(f"{where} must be integers, got {arr.dtype} values")


def _check_vocab(ids: np.ndarray, vocab_size: int, where: str) -> None:
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise UserInputError(f"{where} {int(bad[0])} is outside the vocabulary (size {vocab_size})")


def _float_input(value: object, n: int, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{where} must be an array of numbers ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise UserInputError(f"{where} must be numbers, got {arr.dtype} values")
    arr = arr.reshape(-1)
    if arr.shape[0] != n:
        raise UserInputError(f"{where} has {arr.shape[0]} values but model_input has {n} tokens")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise UserInputError(f"{where} contains NaN or infinite values")
    return arr


def _check_rows(
    data: Sequence[TrainDatum], loss: LossSignature, *, vocab_size: int, max_context: int, strict: bool
) -> list[CheckedRow]:
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise UserInputError(f"data must be a list of datums, got {type(data).__name__}")
    allowed = ("target_tokens", *loss.required, *loss.optional)
    rows: list[CheckedRow] = []
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
        missing = [key for key in ("target_tokens", *loss.required) if key not in raw]
        if missing:
            raise UserInputError(
                f"datum {d}: loss_fn_inputs is missing {', '.join(repr(k) for k in missing)} (required by loss_fn "
                f"{loss.name!r})"
            )
        if strict:
            for key in raw:
                if key not in allowed:
                    raise UserInputError(
                        f"datum {d}: loss_fn_inputs key {key!r} is not used by {loss.name}; "
                        f"accepted keys: {', '.join(allowed)}"
                    )
        targets = _int_tokens(raw["target_tokens"], f"datum {d}: loss_fn_inputs['target_tokens']")
        if targets.shape[0] != n:
            raise UserInputError(
                f"datum {d}: loss_fn_inputs['target_tokens'] has {targets.shape[0]} values "
                f"but model_input has {n} tokens"
            )
        _check_vocab(targets, vocab_size, f"datum {d}: target token id")
        inputs = {
            key: _float_input(value, n, f"datum {d}: loss_fn_inputs[{key!r}]")
            for key, value in raw.items()
            if key != "target_tokens" and key in allowed
        }
        rows.append(CheckedRow(tokens, targets, inputs))
    return rows


def check_train_request(
    data: Sequence[TrainDatum],
    loss_fn: object,
    loss_fn_config: Mapping[str, ConfigValue] | None,
    *,
    backward: bool,
    vocab_size: int,
    max_context: int,
) -> tuple[LossSignature, dict[str, ConfigValue], list[CheckedRow]]:
    """Every check of a forward / forward_backward request: the loss, its config, and each
    datum (flat int tokens within the vocabulary and context; ``target_tokens`` and the
    loss's required inputs, each one value per token; finite floats). ``forward_backward``
    (``backward=True``) refuses inputs its loss does not use, since they signal a wrong
    loss choice; ``forward`` ignores them (``forward_backward_custom`` sends the user's
    data unchanged)."""
    loss = resolve_loss(loss_fn)
    config = resolve_config(loss, loss_fn_config)
    rows = _check_rows(data, loss, vocab_size=vocab_size, max_context=max_context, strict=bool(backward))
    return loss, config, rows


def check_lora_spec(spec: LoraSpec) -> None:
    if not _is_int(spec.rank):
        raise UserInputError(f"LoRA rank must be an integer, got {spec.rank!r}")
    if not 1 <= spec.rank <= MAX_LORA_RANK:
        raise UserInputError(f"LoRA rank must be between 1 and {MAX_LORA_RANK}, got {spec.rank}")
    if spec.seed is not None and not _is_int(spec.seed):
        raise UserInputError(f"LoRA seed must be an integer or None, got {spec.seed!r}")
    if not (spec.train_attn or spec.train_mlp or spec.train_unembed):
        raise UserInputError("LoRA config trains nothing: set at least one of train_attn, train_mlp, train_unembed")


# Largest learning rate accepted: far above any useful value for LoRA + AdamW, low enough that
# one step cannot overflow float32 weights (which would poison the run for good).
MAX_LEARNING_RATE = 10.0


def check_adam(cfg: AdamConfig) -> None:
    """AdamW hyper-parameters: finite; ``0 <= learning_rate <= MAX_LEARNING_RATE``; betas in
    [0, 1); ``eps > 0`` (the update divides by ``sqrt(v) + eps``); weight decay and clipping >= 0."""
    for name in ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"):
        value = getattr(cfg, name)
        if not _finite(value):
            raise UserInputError(f"adam {name} must be a finite number, got {value!r}")
    if not 0 <= cfg.learning_rate <= MAX_LEARNING_RATE:
        raise UserInputError(f"adam learning_rate must be between 0 and {MAX_LEARNING_RATE:g}, got {cfg.learning_rate}")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise UserInputError(f"adam {name} must be in [0, 1), got {getattr(cfg, name)}")
    if not cfg.eps > 0:
        raise UserInputError(f"adam eps must be > 0, got {cfg.eps}")
    for name in ("weight_decay", "grad_clip_norm"):
        if getattr(cfg, name) < 0:
            raise UserInputError(f"adam {name} must be >= 0, got {getattr(cfg, name)}")


# ---------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SampleParams:
    """A :class:`SampleJob`'s validated settings (``top_k = 0`` means off; ``max_new`` is the
    number of tokens to generate at most, the unset default resolved)."""

    prompt: list[int]
    num_samples: int
    max_new: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    stop_strings: tuple[str, ...]
    stop_ids: frozenset[int]
    prompt_logprobs: bool
    topk_prompt_logprobs: int
    topk_sample_logprobs: int
    prompt_logprobs_last_n: int | None
    target_prompt_logprobs: np.ndarray | None  # int64 [P - 1, K], -1 = none
    prompt_alt_tokens_k: int


def check_sample_job(job: SampleJob, *, vocab_size: int, max_context: int) -> SampleParams:
    """Every check of a sampling request; raise :class:`UserInputError` naming the offending field."""
    prompt: Any = job.prompt.tolist() if hasattr(job.prompt, "tolist") else job.prompt
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
    if not _finite(job.temperature) or job.temperature < 0:
        raise UserInputError(f"temperature must be a finite number >= 0, got {job.temperature!r}")
    if not _is_int(job.top_k) or job.top_k < -1:
        raise UserInputError(f"top_k must be -1 (off) or a positive integer, got {job.top_k!r}")
    if not _finite(job.top_p) or not 0 < job.top_p <= 1:
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
    limit = min(MAX_TOPK_LOGPROBS, vocab_size)
    for name in ("topk_sample_logprobs", "prompt_alt_tokens_k"):
        value = getattr(job, name)
        if not _is_int(value) or not 0 <= value <= limit:
            raise UserInputError(f"{name} must be an integer from 0 to {limit}, got {value!r}")
    last_n = job.prompt_logprobs_last_n
    if last_n is not None:
        if not _is_int(last_n) or last_n < 1:
            raise UserInputError(f"prompt_logprobs_last_n must be a positive integer or None, got {last_n!r}")
        if not job.prompt_logprobs:
            raise UserInputError("prompt_logprobs_last_n requires prompt_logprobs")
    return SampleParams(
        prompt=prompt,
        num_samples=int(job.num_samples),
        max_new=max_new,
        temperature=float(job.temperature),
        top_k=max(int(job.top_k), 0),
        top_p=float(job.top_p),
        seed=None if job.seed is None else int(job.seed),
        stop_strings=tuple(stops),
        stop_ids=frozenset(int(t) for t in stop_ids),
        prompt_logprobs=bool(job.prompt_logprobs),
        topk_prompt_logprobs=int(job.topk_prompt_logprobs),
        topk_sample_logprobs=int(job.topk_sample_logprobs),
        prompt_logprobs_last_n=None if last_n is None else int(last_n),
        target_prompt_logprobs=_target_ids(job.target_prompt_logprobs, len(prompt), vocab_size),
        prompt_alt_tokens_k=int(job.prompt_alt_tokens_k),
    )


def _target_ids(value: object, prompt_len: int, vocab_size: int) -> np.ndarray | None:
    """``target_prompt_logprobs`` as an int64 ``[prompt_len - 1, K]`` array, or ``None``."""
    if value is None:
        return None
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise UserInputError("target_prompt_logprobs must be a 2-D array of integer token ids") from None
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise UserInputError(f"target_prompt_logprobs must hold integer token ids, got {arr.dtype} values")
    if arr.ndim != 2 or arr.shape[0] != prompt_len - 1:
        raise UserInputError(
            f"target_prompt_logprobs must have shape [len(prompt) - 1, K] = [{prompt_len - 1}, K], "
            f"got {list(arr.shape)}"
        )
    bad = arr[(arr < -1) | (arr >= vocab_size)]
    if bad.size:
        raise UserInputError(
            f"target_prompt_logprobs token id {int(bad[0])} is outside the vocabulary "
            f"(size {vocab_size}; -1 means no request)"
        )
    return arr.astype(np.int64, copy=True)

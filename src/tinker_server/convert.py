"""Wire types ↔ engine messages, with the checks that are cheap at submit time.

No tensor math: TensorData becomes a numpy array and back. Every failed check
raises :class:`InvalidRequest` with a message naming the offending field.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import wire

from .engine import AdamConfig, SampleJob, SampleOutput, TrainDatum, TrainOutput
from .errors import InvalidRequest

__all__ = [
    "adam_config",
    "sample_job",
    "sample_response",
    "train_data",
    "train_response",
]

KNOWN_INPUT_KEYS = ("target_tokens", "weights", "advantages", "logprobs", "clip_low_threshold", "clip_high_threshold")
_RL_INPUTS = frozenset({"target_tokens", "logprobs", "advantages"})
REQUIRED_INPUTS: dict[str, frozenset[str]] = {
    "cross_entropy": frozenset({"target_tokens"}),
    "importance_sampling": _RL_INPUTS,
    "ppo": _RL_INPUTS,
    "cispo": _RL_INPUTS,
    "dro": _RL_INPUTS,
}
MAX_NUM_SAMPLES = 1024


def _text_tokens(model_input: wire.ModelInput, where: str) -> list[int]:
    tokens: list[int] = []
    for index, chunk in enumerate(model_input.chunks):
        if not isinstance(chunk, wire.EncodedTextChunk):
            raise InvalidRequest(
                f"{where}.chunks[{index}]: {chunk.type} chunks are not supported; "
                "the served models take text tokens only"
            )
        tokens.extend(int(t) for t in chunk.tokens)
    if not tokens:
        raise InvalidRequest(f"{where} is empty: it needs at least one token")
    return tokens


def _check_vocab(tokens: list[int], info: Any, where: str) -> None:
    if info is None:
        return
    vocab = int(info.vocab_size)
    for token in tokens:
        if token < 0 or token >= vocab:
            raise InvalidRequest(
                f"{where}: token id {token} is outside the vocabulary of {info.name} (valid ids: 0..{vocab - 1})"
            )


def _array(tensor: wire.TensorData, where: str) -> np.ndarray:
    dtype = np.int64 if tensor.dtype == "int64" else np.float32
    array = np.asarray(tensor.data, dtype=dtype)
    if tensor.shape is not None:
        expected = math.prod(tensor.shape)
        if expected != array.size:
            raise InvalidRequest(f"{where}: shape {tensor.shape} needs {expected} values, got {array.size}")
    return array


def train_data(data: list[wire.Datum], loss_fn: str, info: Any, *, field: str) -> list[TrainDatum]:
    """Check and convert the datums of a forward/forward_backward request."""
    if not data:
        raise InvalidRequest(f"{field}.data is empty: send at least one datum")
    required = REQUIRED_INPUTS.get(loss_fn, frozenset({"target_tokens"}))
    out: list[TrainDatum] = []
    for i, datum in enumerate(data):
        where = f"{field}.data[{i}]"
        tokens = _text_tokens(datum.model_input, f"{where}.model_input")
        _check_vocab(tokens, info, f"{where}.model_input")
        n = len(tokens)
        if info is not None and n > int(info.max_context):
            raise InvalidRequest(
                f"{where}.model_input has {n} tokens, more than the context length of {info.name} ({info.max_context})"
            )
        missing = sorted(required - datum.loss_fn_inputs.keys())
        if missing:
            raise InvalidRequest(
                f"{where}.loss_fn_inputs is missing {', '.join(repr(k) for k in missing)} "
                f"(required by loss_fn {loss_fn!r})"
            )
        arrays: dict[str, np.ndarray] = {}
        for key, tensor in datum.loss_fn_inputs.items():
            kwhere = f"{where}.loss_fn_inputs[{key!r}]"
            if key not in KNOWN_INPUT_KEYS:
                raise InvalidRequest(f"{where}.loss_fn_inputs has unknown key {key!r}; known keys: {', '.join(KNOWN_INPUT_KEYS)}")
            array = _array(tensor, kwhere).reshape(-1)
            if array.size != n:
                raise InvalidRequest(
                    f"{kwhere} has {array.size} values but model_input has {n} tokens; "
                    "every loss_fn_inputs tensor needs one value per input token"
                )
            if key == "target_tokens":
                if tensor.dtype != "int64":
                    raise InvalidRequest(f"{kwhere} must have dtype int64, got {tensor.dtype}")
                _check_vocab(array.tolist(), info, kwhere)
            else:
                array = array.astype(np.float32, copy=False)
                if not np.all(np.isfinite(array)):
                    raise InvalidRequest(f"{kwhere} contains NaN or infinite values")
            arrays[key] = array
        out.append(TrainDatum(tokens=tokens, loss_fn_inputs=arrays))
    return out


def _tensor(array: Any) -> wire.TensorData:
    a = np.asarray(array)
    if a.dtype.kind in "fc":
        return wire.TensorData(data=a.astype(np.float32).reshape(-1).tolist(), dtype="float32", shape=list(a.shape))
    return wire.TensorData(data=a.astype(np.int64).reshape(-1).tolist(), dtype="int64", shape=list(a.shape))


def train_response(output: TrainOutput, loss_fn: str) -> dict[str, Any]:
    metrics: dict[str, float] = {}
    for key, value in output.metrics.items():
        # The client splits metric keys on ':' and needs exactly one (Q8).
        metrics[key if key.count(":") == 1 else f"{key.replace(':', '_')}:mean"] = float(value)
    result = wire.ForwardBackwardOutput(
        loss_fn_output_type=loss_fn,
        loss_fn_outputs=[{k: _tensor(v) for k, v in item.items()} for item in output.loss_fn_outputs],
        metrics=metrics,
    )
    return result.model_dump(mode="json")


def adam_config(request: wire.OptimStepRequest) -> AdamConfig:
    """The AdamW step an ``optim_step`` asks for; other optimizer families are refused."""
    if request.adam_params is None:
        family = (request.optimizer_params or {}).get("type", "unknown")
        if request.optimizer_params is None:
            raise InvalidRequest("optim_step needs adam_params")
        raise InvalidRequest(
            f"optimizer_params of type {family!r} are not supported by this server; "
            "use AdamParams (the adamw optimizer)"
        )
    params = request.adam_params
    checks = {
        "learning_rate": params.learning_rate >= 0,
        "beta1": 0 <= params.beta1 < 1,
        "beta2": 0 <= params.beta2 < 1,
        "eps": params.eps > 0,
        "weight_decay": params.weight_decay >= 0,
        "grad_clip_norm": params.grad_clip_norm >= 0,
    }
    for name, ok in checks.items():
        value = getattr(params, name)
        if not ok or not math.isfinite(value):
            raise InvalidRequest(f"adam_params.{name} has an invalid value {value!r}")
    return AdamConfig(
        learning_rate=params.learning_rate,
        beta1=params.beta1,
        beta2=params.beta2,
        eps=params.eps,
        weight_decay=params.weight_decay,
        grad_clip_norm=params.grad_clip_norm,
    )


def _stops(stop: Any, info: Any) -> tuple[list[str], list[int]]:
    if stop is None:
        return [], []
    if isinstance(stop, str):
        return [stop], []
    items = list(stop)
    if all(isinstance(s, str) for s in items):
        if any(s == "" for s in items):
            raise InvalidRequest("sampling_params.stop must not contain empty strings")
        return list(items), []
    if all(isinstance(s, int) and not isinstance(s, bool) for s in items):
        _check_vocab(items, info, "sampling_params.stop")
        return [], [int(s) for s in items]
    raise InvalidRequest("sampling_params.stop must be a string, a list of strings or a list of token ids")


def sample_job(request: wire.SampleRequest, adapter_id: str | None, info: Any) -> SampleJob:
    """Check and convert a sampling request."""
    prompt = _text_tokens(request.prompt, "prompt")
    _check_vocab(prompt, info, "prompt")
    params = request.sampling_params
    if request.num_samples < 1 or request.num_samples > MAX_NUM_SAMPLES:
        raise InvalidRequest(f"num_samples must be between 1 and {MAX_NUM_SAMPLES}, got {request.num_samples}")
    if params.max_tokens is not None and params.max_tokens < 1:
        raise InvalidRequest(f"sampling_params.max_tokens must be a positive integer, got {params.max_tokens}")
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise InvalidRequest(f"sampling_params.temperature must be >= 0, got {params.temperature}")
    if not (0 < params.top_p <= 1):
        raise InvalidRequest(f"sampling_params.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k != -1 and params.top_k < 1:
        raise InvalidRequest(f"sampling_params.top_k must be -1 (no limit) or >= 1, got {params.top_k}")
    if request.topk_prompt_logprobs < 0:
        raise InvalidRequest(f"topk_prompt_logprobs must be >= 0, got {request.topk_prompt_logprobs}")
    if info is not None:
        context = int(info.max_context)
        if len(prompt) >= context:
            raise InvalidRequest(f"prompt has {len(prompt)} tokens; the context length of {info.name} is {context}")
        if params.max_tokens is not None and len(prompt) + params.max_tokens > context:
            raise InvalidRequest(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({params.max_tokens}) exceeds the context length "
                f"of {info.name} ({context})"
            )
    stop_strings, stop_token_ids = _stops(params.stop, info)
    return SampleJob(
        adapter_id=adapter_id,
        prompt=prompt,
        num_samples=request.num_samples,
        max_tokens=params.max_tokens,
        temperature=float(params.temperature),
        top_k=int(params.top_k),
        top_p=float(params.top_p),
        seed=params.seed,
        stop_strings=stop_strings,
        stop_token_ids=stop_token_ids,
        prompt_logprobs=bool(request.prompt_logprobs),
        topk_prompt_logprobs=int(request.topk_prompt_logprobs),
    )


def sample_response(output: SampleOutput, sequence_ids: list[str]) -> dict[str, Any]:
    """The result of a sample request; ``sequence_ids[i]`` names ``output.sequences[i]``."""
    topk = None
    if output.topk_prompt_logprobs is not None:
        topk = [
            None if pos is None else [(int(t), float(lp)) for t, lp in pos] for pos in output.topk_prompt_logprobs
        ]
    result = wire.SampleResponse(
        sequences=[
            wire.SampledSequence(
                stop_reason=seq.stop_reason,
                tokens=[int(t) for t in seq.tokens],
                logprobs=[float(x) for x in seq.logprobs],
                sequence_id=sequence_id,
            )
            for seq, sequence_id in zip(output.sequences, sequence_ids, strict=True)
        ],
        prompt_logprobs=None
        if output.prompt_logprobs is None
        else [None if x is None else float(x) for x in output.prompt_logprobs],
        topk_prompt_logprobs=topk,
    )
    return result.model_dump(mode="json")

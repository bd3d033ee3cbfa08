"""Wire types ↔ engine messages, with the checks that are cheap at submit time.

No tensor math: tensors become numpy arrays and back. Training datums come as
JSON-parsed :class:`wire.Datum` or protobuf-decoded :class:`wire.ArrayDatum`;
both get the same checks and messages. Results leave as typed
:class:`wire.TrainResult` / :class:`wire.SampleResult` (the HTTP edge encodes
them). Every failed check raises :class:`InvalidRequest` with a message naming
the offending field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import wire
from .engine.losses import LOSSES
from .engine.sampling import MAX_NUM_SAMPLES, prepare_job
from .engine import AdamConfig, SampleJob, SampleOutput, TrainDatum, TrainOutput, UserInputError
from .errors import InvalidRequest
from .wire.arrays import dense_from_csr

__all__ = [
    "adam_config",
    "sample_job",
    "sample_result",
    "train_data",
    "train_result",
]

# Derived from the engine's loss registry (its one owner): the per-token inputs any loss
# takes, and those each loss needs.
KNOWN_INPUT_KEYS = tuple(
    dict.fromkeys(["target_tokens", *(k for fn in LOSSES.values() for k in (*fn.required, *fn.optional))])
)
REQUIRED_INPUTS: dict[str, frozenset[str]] = {
    name: frozenset({"target_tokens", *fn.required}) for name, fn in LOSSES.items()
}
_INT64 = np.iinfo(np.int64)


def _token_array(chunks: Iterable[Any], info: Any, where: str) -> np.ndarray:
    """The token ids of a model input's chunks, concatenated (int64), checked against
    the vocabulary. Text chunks are ``EncodedTextChunk`` (JSON) or int arrays (protobuf)."""
    parts: list[np.ndarray] = []
    for index, chunk in enumerate(chunks):
        if isinstance(chunk, np.ndarray):
            parts.append(chunk)
        elif isinstance(chunk, wire.EncodedTextChunk):
            parts.append(_int_array(chunk.tokens, info, where))
        else:
            raise InvalidRequest(
                f"{where}.chunks[{index}]: {chunk.type} chunks are not supported; "
                "the served models take text tokens only"
            )
    tokens = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, dtype=np.int64)
    if tokens.size == 0:
        raise InvalidRequest(f"{where} is empty: it needs at least one token")
    _check_vocab(tokens, info, where)
    return tokens


def _text_tokens(model_input: wire.ModelInput, where: str) -> list[int]:
    return _token_array(model_input.chunks, None, where).tolist()


def _int_array(values: Sequence[int] | Sequence[float], info: Any, where: str) -> np.ndarray:
    """Token ids as int64; a value that is no int64 (huge, NaN) is reported as outside the vocabulary."""
    try:
        return np.asarray(values, dtype=np.int64)
    except (OverflowError, ValueError):
        bad = next(v for v in values if not (math.isfinite(v) and _INT64.min <= v <= _INT64.max))
        vocab = f"the vocabulary of {info.name}" if info is not None else "int64"
        raise InvalidRequest(f"{where}: token id {bad} is outside {vocab}") from None


def _check_vocab(tokens: Sequence[int] | np.ndarray, info: Any, where: str) -> None:
    if info is None:
        return
    vocab = int(info.vocab_size)
    ids = np.asarray(tokens)
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.size:
        raise InvalidRequest(
            f"{where}: token id {int(bad[0])} is outside the vocabulary of {info.name} (valid ids: 0..{vocab - 1})"
        )


def _input_array(tensor: wire.TensorData | wire.ArrayTensor, info: Any, where: str) -> tuple[np.ndarray, str]:
    """A loss input as a flat numpy array, and the dtype it was sent as."""
    if isinstance(tensor, wire.ArrayTensor):
        return tensor.array.reshape(-1), tensor.dtype
    if tensor.dtype == "int64":
        array = _int_array(tensor.data, info, where)
    else:
        array = np.asarray(tensor.data, dtype=np.float32)
    if tensor.sparse_crow_indices is not None and tensor.shape is not None:
        try:
            array = dense_from_csr(
                array,
                np.asarray(tensor.sparse_crow_indices, dtype=np.int64),
                np.asarray(tensor.sparse_col_indices or [], dtype=np.int64),
                tensor.shape,
            )
        except ValueError as exc:
            raise InvalidRequest(f"{where}: {exc}") from None
    elif tensor.shape is not None:
        expected = math.prod(tensor.shape)
        if expected != array.size:
            raise InvalidRequest(f"{where}: shape {tensor.shape} needs {expected} values, got {array.size}")
    return array.reshape(-1), tensor.dtype


def train_data(
    data: Sequence[wire.Datum] | Sequence[wire.ArrayDatum], loss_fn: str, info: Any, *, field: str
) -> list[TrainDatum]:
    """Check and convert the datums of a forward/forward_backward request."""
    if not data:
        raise InvalidRequest(f"{field}.data is empty: send at least one datum")
    required = REQUIRED_INPUTS.get(loss_fn, frozenset({"target_tokens"}))
    out: list[TrainDatum] = []
    for i, datum in enumerate(data):
        where = f"{field}.data[{i}]"
        chunks = datum.chunks if isinstance(datum, wire.ArrayDatum) else datum.model_input.chunks
        tokens = _token_array(chunks, info, f"{where}.model_input")
        n = int(tokens.size)
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
            array, dtype = _input_array(tensor, info, kwhere)
            if array.size != n:
                raise InvalidRequest(
                    f"{kwhere} has {array.size} values but model_input has {n} tokens; "
                    "every loss_fn_inputs tensor needs one value per input token"
                )
            if key == "target_tokens":
                if dtype not in ("int64", "int32"):
                    raise InvalidRequest(f"{kwhere} must have dtype int64, got {dtype}")
                array = array.astype(np.int64, copy=False)
                _check_vocab(array, info, kwhere)
            else:
                array = array.astype(np.float32, copy=False)
                if not np.all(np.isfinite(array)):
                    raise InvalidRequest(f"{kwhere} contains NaN or infinite values")
            arrays[key] = array
        out.append(TrainDatum(tokens=tokens, loss_fn_inputs=arrays))  # type: ignore[arg-type]
    return out


def train_result(output: TrainOutput, loss_fn: str) -> wire.TrainResult:
    """A forward/forward_backward result; ``loss_fn_output_type`` is the loss name."""
    metrics: dict[str, float] = {}
    for key, value in output.metrics.items():
        # The client splits metric keys on ':' and needs exactly one (Q8).
        metrics[key if key.count(":") == 1 else f"{key.replace(':', '_')}:mean"] = float(value)
    outputs = [{key: _output_array(value) for key, value in item.items()} for item in output.loss_fn_outputs]
    return wire.TrainResult(loss_fn_output_type=loss_fn, loss_fn_outputs=outputs, metrics=metrics)


def _output_array(value: Any) -> np.ndarray:
    """Floats as float32, anything else as int64 (the two output types of the wire)."""
    array = np.asarray(value)
    return array.astype(np.float32 if array.dtype.kind in "fc" else np.int64, copy=False)


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
    job = SampleJob(
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
        topk_sample_logprobs=int(request.topk_sample_logprobs),
        prompt_logprobs_last_n=request.prompt_logprobs_last_n,
        target_prompt_logprobs=_target_ids(request.target_prompt_logprobs),
        prompt_alt_tokens_k=int(request.prompt_alt_tokens_k),
    )
    if info is not None:
        # The engine owns the sampling rules; run them now so a bad request is a 400 at submit.
        try:
            prepare_job(job, None, vocab_size=int(info.vocab_size), max_context=int(info.max_context))
        except UserInputError as exc:
            raise InvalidRequest(str(exc)) from None
    return job


def _target_ids(tensor: wire.TensorData | None) -> np.ndarray | None:
    """``target_prompt_logprobs`` of a sample request as a dense int64 array (-1 = no request)."""
    if tensor is None:
        return None
    if tensor.dtype != "int64":
        raise InvalidRequest(f"target_prompt_logprobs must hold int64 token ids, got {tensor.dtype}")
    if tensor.shape is None or len(tensor.shape) != 2:
        raise InvalidRequest(f"target_prompt_logprobs must be 2-D, [len(prompt) - 1, K], got shape {tensor.shape}")
    values = np.asarray(tensor.data, dtype=np.int64)
    if tensor.sparse_crow_indices is not None or tensor.sparse_col_indices is not None:
        try:
            return dense_from_csr(
                values,
                np.asarray(tensor.sparse_crow_indices or [], dtype=np.int64),
                np.asarray(tensor.sparse_col_indices or [], dtype=np.int64),
                tensor.shape,
            )
        except ValueError as exc:
            raise InvalidRequest(f"target_prompt_logprobs: {exc}") from None
    if values.size != tensor.shape[0] * tensor.shape[1]:
        raise InvalidRequest(f"target_prompt_logprobs: shape {tensor.shape} needs {tensor.shape[0] * tensor.shape[1]} values, got {values.size}")
    return values.reshape(tensor.shape)


def sample_result(output: SampleOutput, sequence_ids: list[str]) -> wire.SampleResult:
    """The result of a sample request; ``sequence_ids[i]`` names ``output.sequences[i]``."""
    sequences = [
        wire.SequenceResult(
            tokens=np.asarray(seq.tokens, dtype=np.int32),
            logprobs=np.asarray(seq.logprobs, dtype=np.float32),
            stop_reason=seq.stop_reason,
            sequence_id=sequence_id,
            topk_logprobs=None if seq.topk_logprobs is None else wire.TopK.from_rows(seq.topk_logprobs),
        )
        for seq, sequence_id in zip(output.sequences, sequence_ids, strict=True)
    ]
    prompt_logprobs = None
    if output.prompt_logprobs is not None:
        prompt_logprobs = np.array([math.nan if x is None else x for x in output.prompt_logprobs], dtype=np.float32)
    topk = output.topk_prompt_logprobs
    alt = output.prompt_alt_tokens
    return wire.SampleResult(
        sequences=sequences,
        prompt_logprobs=prompt_logprobs,
        topk_prompt_logprobs=None if topk is None else wire.TopK.from_rows(topk),
        target_prompt_logprobs=None
        if output.target_prompt_logprobs is None
        else np.asarray(output.target_prompt_logprobs, dtype=np.float32),
        prompt_alt_tokens=None if alt is None else (np.asarray(alt[0], np.int32), np.asarray(alt[1], np.float32)),
    )

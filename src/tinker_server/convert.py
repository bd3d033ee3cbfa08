"""Wire types ↔ engine messages.

No tensor math: tensors become numpy arrays and back. Training datums come as
JSON-parsed :class:`wire.Datum` or protobuf-decoded :class:`wire.ArrayDatum`;
both become the same :class:`TrainDatum`. Only the wire's own form is checked here
(chunk types, shapes against values, dtypes, known keys); what a request may ask
(vocabulary, context, ranges, required inputs) is the engine's rules
(:mod:`tinker_server.engine.rules`), which the services run at submit time with the
model's info. Results leave as typed :class:`wire.TrainResult` /
:class:`wire.SampleResult` (the HTTP edge encodes them). Every failed check raises
:class:`InvalidRequest` with a message naming the offending field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import wire
from .engine import AdamConfig, ModelInfo, SampleJob, SampleOutput, TrainDatum, TrainOutput, UserInputError, rules
from .errors import InvalidRequest
from .wire.arrays import dense_from_csr

__all__ = [
    "adam_config",
    "check_sample_tokens",
    "check_train_tokens",
    "sample_job",
    "sample_result",
    "train_data",
    "train_result",
]

# From the engine's loss signatures (their one owner): the per-token inputs any loss takes.
KNOWN_INPUT_KEYS = rules.known_input_keys()
_INT64 = np.iinfo(np.int64)


def _token_array(chunks: Iterable[Any], where: str) -> np.ndarray:
    """The token ids of a model input's chunks, concatenated (int64). Text chunks are
    ``EncodedTextChunk`` (JSON) or int arrays (protobuf)."""
    parts: list[np.ndarray] = []
    for index, chunk in enumerate(chunks):
        if isinstance(chunk, np.ndarray):
            parts.append(chunk)
        elif isinstance(chunk, wire.EncodedTextChunk):
            parts.append(_int_array(chunk.tokens, where))
        else:
            raise InvalidRequest(
                f"{where}.chunks[{index}]: {chunk.type} chunks are not supported; "
                "the served models take text tokens only"
            )
    tokens = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, dtype=np.int64)
    if tokens.size == 0:
        raise InvalidRequest(f"{where} is empty: it needs at least one token")
    return tokens


def _text_tokens(model_input: wire.ModelInput, where: str) -> list[int]:
    return _token_array(model_input.chunks, where).tolist()


def _int_array(values: Sequence[int] | Sequence[float], where: str, what: str = "token id") -> np.ndarray:
    """Whole numbers as int64. A value that is no int64 (too large, fractional, NaN) is
    refused, never truncated or wrapped."""
    try:
        array = np.asarray(values)
    except (OverflowError, ValueError):
        array = np.asarray(values, dtype=object)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind == "i":
        return array.astype(np.int64, copy=False)
    if array.dtype.kind == "f":
        ok = np.isfinite(array)
        ok[ok] = (array[ok] == np.floor(array[ok])) & (array[ok] >= -(2.0**63)) & (array[ok] < 2.0**63)
        if ok.all():
            return array.astype(np.int64)
        bad = array[~ok].reshape(-1)[0].item()
    else:  # unsigned beyond int64, or Python ints numpy could not hold
        bad = next(
            (v for v in array.reshape(-1).tolist() if not (isinstance(v, int) and _INT64.min <= v <= _INT64.max)),
            None,
        )
        if bad is None:
            return np.asarray(array.tolist(), dtype=np.int64)
    raise InvalidRequest(f"{where}: {what} {bad!r} is not a whole number in the int64 range")


def check_train_tokens(data: Sequence[wire.Datum] | Sequence[wire.ArrayDatum], limit: int, *, field: str) -> None:
    """Refuse a forward/forward_backward whose datums carry more than ``limit`` tokens
    (setting ``max_train_tokens_per_request``), before anything is queued."""
    total = 0
    for datum in data:
        chunks = datum.chunks if isinstance(datum, wire.ArrayDatum) else datum.model_input.chunks
        for chunk in chunks:
            if isinstance(chunk, np.ndarray):
                total += int(chunk.size)
            elif isinstance(chunk, wire.EncodedTextChunk):
                total += len(chunk.tokens)
    if total > limit:
        raise InvalidRequest(
            f"{field}.data holds {total} tokens, more than the {limit} one request may carry on this server; "
            "split the batch into several forward_backward calls (gradients accumulate until optim_step)"
        )


def check_sample_tokens(jobs: SampleJob | Sequence[SampleJob], limit: int) -> None:
    """Refuse sampling that may cost more than ``limit`` tokens (setting
    ``max_sample_tokens_per_request``): ``num_samples * (prompt + max_tokens)`` summed over
    the request's jobs (an OpenAI request has one per prompt), ``max_tokens`` unset counted
    as the engine's default."""
    cost = 0
    for job in [jobs] if isinstance(jobs, SampleJob) else jobs:
        max_tokens = rules.MAX_TOKENS_WHEN_UNSET if job.max_tokens is None else max(0, job.max_tokens)
        cost += job.num_samples * (len(job.prompt) + max_tokens)
    if cost > limit:
        raise InvalidRequest(
            f"this sampling request may cost {cost} tokens (number of samples x (prompt + max_tokens)), "
            f"more than the {limit} one request may cost on this server; ask for fewer samples or fewer "
            "tokens per request"
        )


def _input_array(tensor: wire.TensorData | wire.ArrayTensor, where: str) -> tuple[np.ndarray, str]:
    """A loss input as a flat numpy array, and the dtype it was sent as."""
    if isinstance(tensor, wire.ArrayTensor):
        return tensor.array.reshape(-1), tensor.dtype
    array = (
        _int_array(tensor.data, where, "int64 value")
        if tensor.dtype == "int64"
        else np.asarray(tensor.data, dtype=np.float32)
    )
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


def train_data(data: Sequence[wire.Datum] | Sequence[wire.ArrayDatum], *, field: str) -> list[TrainDatum]:
    """Convert the datums of a forward/forward_backward request (wire form checks only)."""
    if not data:
        raise InvalidRequest(f"{field}.data is empty: send at least one datum")
    out: list[TrainDatum] = []
    datums: Sequence[wire.Datum | wire.ArrayDatum] = data
    for i, datum in enumerate(datums):
        where = f"{field}.data[{i}]"
        chunks = datum.chunks if isinstance(datum, wire.ArrayDatum) else datum.model_input.chunks
        tokens = _token_array(chunks, f"{where}.model_input")
        arrays: dict[str, np.ndarray] = {}
        for key, tensor in datum.loss_fn_inputs.items():
            kwhere = f"{where}.loss_fn_inputs[{key!r}]"
            if key not in KNOWN_INPUT_KEYS:
                raise InvalidRequest(
                    f"{where}.loss_fn_inputs has unknown key {key!r}; known keys: {', '.join(KNOWN_INPUT_KEYS)}"
                )
            array, dtype = _input_array(tensor, kwhere)
            if key == "target_tokens":
                if dtype not in ("int64", "int32"):
                    raise InvalidRequest(f"{kwhere} must have dtype int64, got {dtype}")
                array = array.astype(np.int64, copy=False)
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
    config = AdamConfig(
        learning_rate=params.learning_rate,
        beta1=params.beta1,
        beta2=params.beta2,
        eps=params.eps,
        weight_decay=params.weight_decay,
        grad_clip_norm=params.grad_clip_norm,
    )
    try:
        rules.check_adam(config)
    except UserInputError as exc:
        raise InvalidRequest(f"adam_params: {exc}") from None
    return config


def _stops(stop: Any) -> tuple[list[str], list[int]]:
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
        return [], [int(s) for s in items]
    raise InvalidRequest("sampling_params.stop must be a string, a list of strings or a list of token ids")


def sample_job(request: wire.SampleRequest, adapter_id: str | None, info: ModelInfo) -> SampleJob:
    """Convert a sampling request and check it with the engine's rules for ``info``'s model."""
    prompt = _text_tokens(request.prompt, "prompt")
    params = request.sampling_params
    stop_strings, stop_token_ids = _stops(params.stop)
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
    try:
        rules.check_sample_job(job, vocab_size=int(info.vocab_size), max_context=int(info.max_context))
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
    values = _int_array(tensor.data, "target_prompt_logprobs", "token id")
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
        raise InvalidRequest(
            f"target_prompt_logprobs: shape {tensor.shape} needs {tensor.shape[0] * tensor.shape[1]} values, "
            f"got {values.size}"
        )
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

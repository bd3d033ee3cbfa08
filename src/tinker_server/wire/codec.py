"""Bodies in both encodings: protobuf (``tinker_wire.proto``) and JSON.

Requests: :func:`decode_training_request` turns a protobuf (optionally zstd
framed) ``ForwardBackwardRequest`` into the same request models a JSON body
becomes, with numpy datums (:mod:`.arrays`). Results: a :class:`TrainResult`
or :class:`SampleResult` encodes to its protobuf message (``ForwardBackwardOutput``,
``SampleResponse``), decodes back from it, and encodes to the JSON the 0.5.1-era
clients read. Every malformed body raises :class:`~tinker_server.errors.InvalidRequest`
with a sentence naming the field.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydantic_core
import zstandard
from google.protobuf.message import DecodeError

from ..errors import InvalidRequest
from . import tinker_wire_pb2 as pb
from .arrays import ArrayChunk, ArrayDatum, ArrayTensor, ProvenanceSpan, dense_from_csr
from .model_input import DmelChunk, ImageChunk
from .results import SampleResult, SequenceResult, TopK, TrainResult
from .sampling import SampledSequence, SampleResponse
from .training import ForwardBackwardInput, ForwardBackwardRequest, ForwardRequest

__all__ = [
    "MAX_DECOMPRESSED_BYTES",
    "PROTOBUF",
    "decode_sample_result",
    "decode_train_result",
    "decode_training_request",
    "encode_sample_result",
    "encode_train_result",
    "sample_result_json",
    "train_result_json",
]

PROTOBUF = "application/x-protobuf"
# A zstd body may not expand beyond this (the clients split batches far below it).
MAX_DECOMPRESSED_BYTES = 1 << 30

# Wire dtype → (name, little-endian numpy dtype of the bytes).
_DTYPES: dict[int, tuple[str, str]] = {
    pb.DTYPE_FLOAT32: ("float32", "<f4"),
    pb.DTYPE_INT64: ("int64", "<i8"),
    pb.DTYPE_INT32: ("int32", "<i4"),
    pb.DTYPE_BFLOAT16: ("bfloat16", "<u2"),
}
_STOP_REASONS = {"stop": pb.STOP_REASON_STOP, "length": pb.STOP_REASON_LENGTH}
_STOP_NAMES = {value: name for name, value in _STOP_REASONS.items()}


# -- requests -------------------------------------------------------------------------------


def decode_training_request(
    body: bytes, content_encoding: str | None = None, *, limit: int = MAX_DECOMPRESSED_BYTES
) -> ForwardRequest | ForwardBackwardRequest:
    """A protobuf ``ForwardBackwardRequest``: ``forward_only`` → :class:`ForwardRequest`."""
    message = pb.ForwardBackwardRequest()
    try:
        message.ParseFromString(decompress(body, content_encoding, limit=limit))
    except DecodeError as exc:
        raise InvalidRequest(f"the body is not a valid protobuf ForwardBackwardRequest ({exc})") from None
    if not message.model_id:
        raise InvalidRequest("the ForwardBackwardRequest has no model_id")
    data = [_datum(datum, f"data[{i}]") for i, datum in enumerate(message.data)]
    batch = ForwardBackwardInput(data=data, loss_fn=message.loss_fn, loss_fn_config=_loss_config(message))
    seq_id = message.seq_id or None
    if message.forward_only:
        return ForwardRequest(forward_input=batch, model_id=message.model_id, seq_id=seq_id)
    return ForwardBackwardRequest(forward_backward_input=batch, model_id=message.model_id, seq_id=seq_id)


def decompress(body: bytes, content_encoding: str | None, *, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """The body under its ``Content-Encoding``: none (or identity) or one zstd frame that
    expands to at most ``limit`` bytes (the server passes its ``max_body_bytes``)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "zstd":
        raise InvalidRequest(f"Content-Encoding {content_encoding!r} is not supported; send zstd or no encoding")
    try:
        size = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise InvalidRequest(f"the body is not a zstd frame ({exc})") from None
    if size > limit:
        raise InvalidRequest(f"the zstd body expands to {size} bytes, more than the {limit} allowed")
    try:
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise InvalidRequest(f"the zstd body cannot be decompressed ({exc})") from None


def _loss_config(message: pb.ForwardBackwardRequest) -> dict[str, float | str] | None:
    """``loss_fn_config_v2`` (numbers and strings) when present, else the legacy numeric map."""
    if message.loss_fn_config_v2:
        config: dict[str, float | str] = {}
        for key, value in message.loss_fn_config_v2.items():
            kind = value.WhichOneof("value")
            if kind is None:
                raise InvalidRequest(f"loss_fn_config_v2[{key!r}] holds neither a number nor a text")
            config[key] = value.number if kind == "number" else value.text
        return config
    if message.loss_fn_config:
        return dict(message.loss_fn_config)
    return None


def _datum(datum: pb.Datum, where: str) -> ArrayDatum:
    chunks = [_chunk(chunk, f"{where}.model_input[{i}]") for i, chunk in enumerate(datum.model_input)]
    inputs = {key: _tensor(tensor, f"{where}.loss_fn_inputs[{key!r}]") for key, tensor in datum.loss_fn_inputs.items()}
    return ArrayDatum(
        chunks,
        inputs,
        model_input_spans=[_span(span, f"{where}.model_input_spans") for span in datum.model_input_spans],
        loss_fn_input_spans=[_span(span, f"{where}.loss_fn_input_spans") for span in datum.loss_fn_input_spans],
    )


def _chunk(chunk: pb.Chunk, where: str) -> ArrayChunk:
    kind = chunk.WhichOneof("chunk")
    if kind == "encoded_text":
        return _frombuffer(chunk.encoded_text.tokens, "<i4", f"{where}.encoded_text.tokens", "int32")
    if kind == "image":
        image = chunk.image
        expected = image.expected_tokens if image.HasField("expected_tokens") else None
        return ImageChunk(data=image.data, format=image.format, expected_tokens=expected)
    if kind == "dmel":
        return DmelChunk(dmel=chunk.dmel.dmel)
    raise InvalidRequest(f"{where} is empty: a chunk needs encoded_text, image or dmel")


def _span(span: pb.ProvenanceSpan, where: str) -> ProvenanceSpan:
    kind = span.WhichOneof("span")
    if kind == "prompt_tokens":
        part = span.prompt_tokens
        return ProvenanceSpan("prompt", part.sequence_id, part.offset, part.length)
    if kind == "sampled_tokens":
        part2 = span.sampled_tokens
        return ProvenanceSpan("sampled", part2.sequence_id, part2.offset, part2.length)
    raise InvalidRequest(f"{where} has an empty span: it needs prompt_tokens or sampled_tokens")


def _frombuffer(data: bytes, dtype: str, where: str, name: str) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    if len(data) % width:
        raise InvalidRequest(f"{where} has {len(data)} bytes, not a whole number of {name} values ({width} bytes each)")
    return np.frombuffer(data, dtype=dtype)


def _tensor(tensor: pb.Tensor, where: str) -> ArrayTensor:
    known = _DTYPES.get(tensor.dtype)
    if known is None:
        name = pb.DType.Name(tensor.dtype) if tensor.dtype in pb.DType.values() else str(tensor.dtype)
        raise InvalidRequest(f"{where} has dtype {name}; expected FLOAT32, INT64, INT32 or BFLOAT16")
    name, dtype = known
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"{where} has shape {shape} with a negative dimension")
    if tensor.WhichOneof("encoding") == "sparse_csr":
        csr = tensor.sparse_csr
        values = _widen(_frombuffer(csr.values, dtype, f"{where}.sparse_csr.values", name))
        crow = _frombuffer(csr.crow_indices, "<i8", f"{where}.sparse_csr.crow_indices", "int64")
        col = _frombuffer(csr.col_indices, "<i8", f"{where}.sparse_csr.col_indices", "int64")
        try:
            return ArrayTensor(dense_from_csr(values, crow, col, shape), name)
        except ValueError as exc:
            raise InvalidRequest(f"{where}: {exc}") from None
    array = _widen(_frombuffer(tensor.dense, dtype, f"{where}.dense", name))
    if shape:
        expected = int(np.prod(shape, dtype=np.int64))
        if expected != array.size:
            raise InvalidRequest(f"{where}: shape {shape} needs {expected} values, got {array.size}")
        array = array.reshape(shape)
    return ArrayTensor(array, name)


def _widen(array: np.ndarray) -> np.ndarray:
    """bfloat16 (read as uint16) → float32: its bits are the high half of a float32's."""
    if array.dtype == np.dtype("<u2"):
        return (array.astype("<u4") << 16).view("<f4")
    return array


# -- training results -----------------------------------------------------------------------


def encode_train_result(result: TrainResult) -> bytes:
    """A ``ForwardBackwardOutput``: datums whose outputs share names, element types and
    trailing shapes go into one ``ArrayRecord`` (normally all of them)."""
    message = pb.ForwardBackwardOutput(loss_fn_output_type=result.loss_fn_output_type, metrics=result.metrics)
    for group in _record_groups([_prepared(outputs) for outputs in result.loss_fn_outputs]):
        record = message.loss_fn_outputs.add(num_datums=len(group))
        for key in group[0]:
            arrays = [outputs[key] for outputs in group]
            field = record.fields[key]
            field.dtype = pb.DTYPE_FLOAT32 if arrays[0].dtype == np.float32 else pb.DTYPE_INT64
            field.trailing_shape.extend(arrays[0].shape[1:])
            sizes = np.fromiter((a.nbytes for a in arrays), dtype=np.int64, count=len(arrays))
            field.offsets = np.concatenate(([0], np.cumsum(sizes))).astype("<i8").tobytes()
            field.data = b"".join(a.tobytes() for a in arrays)
    return message.SerializeToString()


def _prepared(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each output as a contiguous little-endian float32 or int64 array of at least one dimension."""
    prepared = {}
    for key, value in outputs.items():
        array = np.asarray(value)
        dtype = "<f4" if array.dtype.kind in "fc" else "<i8"
        prepared[key] = np.ascontiguousarray(array.reshape(-1) if array.ndim == 0 else array, dtype=dtype)
    return prepared


def _record_groups(datums: list[dict[str, np.ndarray]]) -> list[list[dict[str, np.ndarray]]]:
    """Runs of consecutive datums with the same output layout."""

    def layout(outputs: dict[str, np.ndarray]) -> tuple[Any, ...]:
        return tuple((key, a.dtype.str, a.shape[1:]) for key, a in outputs.items())

    groups: list[list[dict[str, np.ndarray]]] = []
    for outputs in datums:
        if groups and layout(groups[-1][0]) == layout(outputs):
            groups[-1].append(outputs)
        else:
            groups.append([outputs])
    return groups


def decode_train_result(data: bytes) -> TrainResult:
    message = pb.ForwardBackwardOutput()
    message.ParseFromString(data)
    outputs: list[dict[str, np.ndarray]] = []
    for record in message.loss_fn_outputs:
        columns = {key: _unbatch(field) for key, field in record.fields.items()}
        count = record.num_datums or min((len(c) for c in columns.values()), default=0)
        outputs.extend({key: column[i] for key, column in columns.items()} for i in range(count))
    return TrainResult(message.loss_fn_output_type, outputs, dict(message.metrics))


def _unbatch(field: pb.BatchedTensor) -> list[np.ndarray]:
    name, dtype = _DTYPES.get(field.dtype, ("float32", "<f4"))
    offsets = np.frombuffer(field.offsets, dtype="<i8").tolist()
    trailing = tuple(field.trailing_shape)
    data = field.data
    out = []
    for start, end in itertools.pairwise(offsets):
        array = _widen(np.frombuffer(data, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize, offset=start))
        if name == "int32":
            array = array.astype(np.int64)
        out.append(array.reshape(-1, *trailing))
    return out


def train_result_json(result: TrainResult) -> bytes:
    """The ``ForwardBackwardOutput`` JSON object: per datum ``{name: {data, dtype, shape}}``."""
    outputs = [
        {
            key: {
                "data": array.reshape(-1).tolist(),
                "dtype": "float32" if array.dtype.kind in "fc" else "int64",
                "shape": list(array.shape),
            }
            for key, array in datum.items()
        }
        for datum in result.loss_fn_outputs
    ]
    body = {"loss_fn_output_type": result.loss_fn_output_type, "loss_fn_outputs": outputs, "metrics": result.metrics}
    return pydantic_core.to_json(body)


# -- sampling results -----------------------------------------------------------------------


def encode_sample_result(result: SampleResult) -> bytes:
    """A ``SampleResponse``. Sequence ids are not part of it: the client pairs sequences
    with the ids of the submit's answer by order."""
    message = pb.SampleResponse()
    for seq in result.sequences:
        item = message.sequences.add(
            stop_reason=_STOP_REASONS[seq.stop_reason],
            tokens=np.asarray(seq.tokens, dtype="<i4").tobytes(),
            logprobs=np.asarray(seq.logprobs, dtype="<f4").tobytes(),
        )
        if seq.topk_logprobs is not None:
            _set_topk(item.topk_sampled_logprobs, seq.topk_logprobs)
    if result.prompt_logprobs is not None:
        message.prompt_logprobs = np.asarray(result.prompt_logprobs, dtype="<f4").tobytes()
    if result.topk_prompt_logprobs is not None:
        _set_topk(message.topk_prompt_logprobs, result.topk_prompt_logprobs)
    if result.target_prompt_logprobs is not None:
        _set_dense(message.target_prompt_logprobs, result.target_prompt_logprobs, pb.DTYPE_FLOAT32, "<f4")
    if result.prompt_alt_tokens is not None:
        ids, logprobs = result.prompt_alt_tokens
        _set_dense(message.prompt_alt_tokens.tokens, ids, pb.DTYPE_INT32, "<i4")
        _set_dense(message.prompt_alt_tokens.logprobs, logprobs, pb.DTYPE_FLOAT32, "<f4")
    return message.SerializeToString()


def _set_topk(target: pb.TopkLogprobs, topk: TopK) -> None:
    n, k = topk.token_ids.shape
    target.token_ids = np.ascontiguousarray(topk.token_ids, dtype="<i4").tobytes()
    target.logprobs = np.ascontiguousarray(topk.logprobs, dtype="<f4").tobytes()
    target.k = k
    target.length = n


def _set_dense(target: pb.Tensor, array: np.ndarray, dtype: int, np_dtype: str) -> None:
    values = np.ascontiguousarray(array, dtype=np_dtype)
    target.dense = values.tobytes()
    target.dtype = dtype  # type: ignore[assignment]
    target.shape.extend(values.shape)


def decode_sample_result(data: bytes, sequence_ids: Sequence[str] = ()) -> SampleResult:
    message = pb.SampleResponse()
    message.ParseFromString(data)
    ids: list[str | None] = [*sequence_ids, *([None] * (len(message.sequences) - len(sequence_ids)))]
    sequences = [
        SequenceResult(
            tokens=np.frombuffer(seq.tokens, dtype="<i4"),
            logprobs=np.frombuffer(seq.logprobs, dtype="<f4"),
            stop_reason=_STOP_NAMES[seq.stop_reason],  # type: ignore[arg-type]
            sequence_id=sequence_id,
            topk_logprobs=_topk(seq.topk_sampled_logprobs) if seq.HasField("topk_sampled_logprobs") else None,
        )
        for seq, sequence_id in zip(message.sequences, ids, strict=False)
    ]
    alt = None
    if message.HasField("prompt_alt_tokens"):
        alt = (_dense(message.prompt_alt_tokens.tokens), _dense(message.prompt_alt_tokens.logprobs))
    return SampleResult(
        sequences=sequences,
        prompt_logprobs=np.frombuffer(message.prompt_logprobs, dtype="<f4")
        if message.HasField("prompt_logprobs")
        else None,
        topk_prompt_logprobs=_topk(message.topk_prompt_logprobs) if message.HasField("topk_prompt_logprobs") else None,
        target_prompt_logprobs=_dense(message.target_prompt_logprobs)
        if message.HasField("target_prompt_logprobs")
        else None,
        prompt_alt_tokens=alt,
    )


def _topk(topk: pb.TopkLogprobs) -> TopK:
    shape = (topk.length, topk.k)
    return TopK(
        np.frombuffer(topk.token_ids, dtype="<i4").reshape(shape),
        np.frombuffer(topk.logprobs, dtype="<f4").reshape(shape),
    )


def _dense(tensor: pb.Tensor) -> np.ndarray:
    return _tensor(tensor, "tensor").array


def sample_result_json(result: SampleResult) -> bytes:
    """The ``SampleResponse`` JSON object (``prompt_logprobs`` with ``null`` where not computed)."""
    sequences = [
        SampledSequence.model_construct(
            stop_reason=seq.stop_reason,
            tokens=seq.tokens.tolist(),
            logprobs=seq.logprobs.tolist(),
            sequence_id=seq.sequence_id,
            topk_logprobs=None if seq.topk_logprobs is None else seq.topk_logprobs.rows(),
        )
        for seq in result.sequences
    ]
    prompt_logprobs = None
    if result.prompt_logprobs is not None:
        prompt_logprobs = [None if x != x else x for x in result.prompt_logprobs.tolist()]
    topk = None if result.topk_prompt_logprobs is None else result.topk_prompt_logprobs.rows()
    response = SampleResponse.model_construct(
        sequences=sequences, prompt_logprobs=prompt_logprobs, topk_prompt_logprobs=topk
    )
    return response.model_dump_json().encode()

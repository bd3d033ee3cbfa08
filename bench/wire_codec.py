"""Server-side cost of the two encodings of a forward_backward: protobuf against JSON.

    python bench/wire_codec.py [--datums 64] [--tokens 2048] [--rounds 15]

One request of ``--datums`` x ``--tokens`` tokens (cross_entropy: target_tokens
int64, weights float32) and its result (one float32 logprob per token), both
built in this process. Each round times the protobuf path, then the JSON path,
so machine drift hits both alike; the medians and their ratio are printed.

Request, bytes → the engine's datums (what happens before a submit is queued):

* protobuf: ``codec.decode_training_request`` (numpy views of the bytes), then
  ``convert.train_data`` (the submit-time checks);
* protobuf + zstd: the same after decompressing one zstd frame;
* JSON: ``ForwardBackwardRequest.model_validate_json``, then ``convert.train_data``.

Result, the engine's output → the bytes of the ``retrieve_future`` answer:

* protobuf: ``convert.train_result`` and ``codec.encode_train_result`` (the stored
  form, which a protobuf answer sends as it is);
* JSON: the same, then decoding the stored form and ``codec.train_result_json``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zstandard

from tinker_server import wire
from tinker_server.convert import train_data, train_result
from tinker_server.engine import TrainOutput
from tinker_server.wire import codec, tinker_wire_pb2 as pb

VOCAB = 49152


def build_request(datums: int, tokens: int, seed: int = 0) -> tuple[bytes, bytes]:
    """The same forward_backward request as protobuf and as JSON bytes."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(datums, tokens + 1))
    weights = (rng.random((datums, tokens)) > 0.3).astype(np.float32)
    message = pb.ForwardBackwardRequest(model_id="s:train:0", seq_id=1, loss_fn="cross_entropy")
    json_data = []
    for row, w in zip(ids, weights, strict=True):
        inputs, targets = row[:-1], row[1:]
        message.data.add(
            model_input=[pb.Chunk(encoded_text=pb.EncodedTextChunk(tokens=inputs.astype("<i4").tobytes()))],
            loss_fn_inputs={
                "target_tokens": pb.Tensor(dense=targets.astype("<i8").tobytes(), dtype=pb.DTYPE_INT64, shape=[tokens]),
                "weights": pb.Tensor(dense=w.astype("<f4").tobytes(), dtype=pb.DTYPE_FLOAT32, shape=[tokens]),
            },
        )
        json_data.append(
            wire.Datum(
                model_input=wire.ModelInput.from_ints(inputs.tolist()),
                loss_fn_inputs={
                    "target_tokens": wire.TensorData(data=targets.tolist(), dtype="int64", shape=[tokens]),
                    "weights": wire.TensorData(data=w.tolist(), dtype="float32", shape=[tokens]),
                },
            )
        )
    body = wire.ForwardBackwardRequest(
        forward_backward_input=wire.ForwardBackwardInput(data=json_data, loss_fn="cross_entropy"),
        model_id="s:train:0",
        seq_id=1,
    )
    return message.SerializeToString(), body.model_dump_json().encode()


def build_output(datums: int, tokens: int, seed: int = 1) -> TrainOutput:
    rng = np.random.default_rng(seed)
    logprobs = -rng.exponential(2.0, size=(datums, tokens)).astype(np.float32)
    return TrainOutput(loss_fn_outputs=[{"logprobs": row} for row in logprobs], metrics={"loss:sum": 12345.678})


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.platform()}, Python {platform.python_version()}"


def alternate(paths: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each path, the paths run one after another in every round."""
    for run in paths.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in paths.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datums", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)

    field = "forward_backward_input"
    proto_body, json_body = build_request(args.datums, args.tokens)
    zstd_body = zstandard.ZstdCompressor().compress(proto_body)

    def datums(request: Any) -> Any:
        return train_data(request.forward_backward_input.data, field=field)

    def decode_proto() -> Any:
        return datums(codec.decode_training_request(proto_body))

    def decode_zstd() -> Any:
        return datums(codec.decode_training_request(zstd_body, "zstd"))

    def decode_json() -> Any:
        return datums(wire.ForwardBackwardRequest.model_validate_json(json_body))

    a, b = decode_proto(), decode_json()
    for x, y in zip(a, b, strict=True):  # the same datums either way
        assert np.array_equal(x.tokens, y.tokens)
        assert all(np.array_equal(x.loss_fn_inputs[k], y.loss_fn_inputs[k]) for k in ("target_tokens", "weights"))

    output = build_output(args.datums, args.tokens)

    def encode_proto() -> bytes:
        return codec.encode_train_result(train_result(output, "cross_entropy"))

    def encode_json() -> bytes:
        stored = codec.encode_train_result(train_result(output, "cross_entropy"))
        return codec.train_result_json(codec.decode_train_result(stored))

    result_proto, result_json = encode_proto(), encode_json()

    requests = alternate({"protobuf": decode_proto, "protobuf+zstd": decode_zstd, "json": decode_json}, args.rounds)
    results = alternate({"protobuf": encode_proto, "json": encode_json}, args.rounds)

    print(f"machine : {machine()}")
    print(
        f"request : {args.datums} x {args.tokens} tokens; protobuf {len(proto_body) / 1e6:.2f} MB, "
        f"zstd {len(zstd_body) / 1e6:.2f} MB, JSON {len(json_body) / 1e6:.2f} MB"
    )
    print(f"result  : protobuf {len(result_proto) / 1e6:.2f} MB, JSON {len(result_json) / 1e6:.2f} MB")
    print(f"medians of {args.rounds} alternating rounds:")
    print("| path | protobuf | protobuf+zstd | JSON | JSON / protobuf |")
    print("|---|---|---|---|---|")
    req = {name: f"{seconds * 1e3:.1f} ms" for name, seconds in requests.items()}
    print(
        f"| request: bytes → engine datums | {req['protobuf']} | {req['protobuf+zstd']} | {req['json']} "
        f"| **{requests['json'] / requests['protobuf']:.1f}x** |"
    )
    print(
        f"| result: engine output → answer bytes | {results['protobuf'] * 1e3:.1f} ms | – "
        f"| {results['json'] * 1e3:.1f} ms | **{results['json'] / results['protobuf']:.1f}x** |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

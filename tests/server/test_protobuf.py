"""Protobuf bodies (0.18+ clients) through the real app, on the fake engine.

Requests are built by hand from the generated module: forward_backward bodies in
protobuf (optionally zstd), results negotiated by ``Accept``. The numbers must be
the same whichever encoding carried them.
"""

from __future__ import annotations

import itertools
import json
import math
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest
import zstandard
from fastapi.testclient import TestClient

from tinker_server import wire
from tinker_server.app import create_app
from tinker_server.engine import TINY_MODEL
from tinker_server.settings import Settings
from tinker_server.wire import codec, tinker_wire_pb2 as pb

from .conftest import FAKE_MODEL, Api, datum, fb_body
from .fake_engine import BAD_TOKEN, FakeEngine

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTOBUF = "application/x-protobuf"


# -- building bodies ------------------------------------------------------------------------


def text(tokens: Iterable[int]) -> pb.Chunk:
    return pb.Chunk(encoded_text=pb.EncodedTextChunk(tokens=np.asarray(list(tokens), "<i4").tobytes()))


def dense(values: Any, dtype: pb.DType = pb.DTYPE_FLOAT32, shape: Iterable[int] | None = None) -> pb.Tensor:
    np_dtype = {pb.DTYPE_FLOAT32: "<f4", pb.DTYPE_INT64: "<i8", pb.DTYPE_INT32: "<i4"}[dtype]
    return pb.Tensor(dense=np.asarray(values, np_dtype).tobytes(), dtype=dtype, shape=list(shape or []))


def bf16(values: list[float]) -> pb.Tensor:
    """bfloat16 bits are the high half of a float32's (exact for the values used here)."""
    bits = (np.asarray(values, "<f4").view("<u4") >> 16).astype("<u2")
    return pb.Tensor(dense=bits.tobytes(), dtype=pb.DTYPE_BFLOAT16)


def csr(matrix: list[list[float]]) -> pb.Tensor:
    array = np.asarray(matrix, np.float32)
    rows, cols = np.nonzero(array)
    crow = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=array.shape[0]))))
    sparse = pb.SparseCsr(
        values=array[rows, cols].astype("<f4").tobytes(),
        crow_indices=crow.astype("<i8").tobytes(),
        col_indices=cols.astype("<i8").tobytes(),
    )
    return pb.Tensor(sparse_csr=sparse, dtype=pb.DTYPE_FLOAT32, shape=list(array.shape))


def proto_datum(tokens: list[int], weights: pb.Tensor | None = None, targets: pb.Tensor | None = None) -> pb.Datum:
    inputs = {
        "target_tokens": targets or dense([*tokens[1:], tokens[0]], pb.DTYPE_INT64),
        "weights": weights or dense([1.0] * len(tokens)),
    }
    return pb.Datum(model_input=[text(tokens)], loss_fn_inputs=inputs)


def fb_proto(
    model_id: str, seq_id: int, data: list[pb.Datum] | None = None, **fields: Any
) -> pb.ForwardBackwardRequest:
    data = data or [proto_datum([1, 2, 3])]
    return pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, data=data, loss_fn="cross_entropy", **fields)


def post_proto(api: Api, message: pb.ForwardBackwardRequest | bytes, *, zstd: bool = False) -> Any:
    body = message if isinstance(message, bytes) else message.SerializeToString()
    headers = {"Content-Type": PROTOBUF}
    if zstd:
        body = zstandard.ZstdCompressor().compress(body)
        headers["Content-Encoding"] = "zstd"
    return api.post("forward_backward", content=body, headers=headers)


def submit_proto(api: Api, message: pb.ForwardBackwardRequest, *, zstd: bool = False) -> str:
    response = post_proto(api, message, zstd=zstd)
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def fetch(api: Api, request_id: str, accept: str | None, timeout: float = 30.0) -> Any:
    """The finished future's HTTP answer, polling through 408s."""
    headers = {"Accept": accept} if accept is not None else {}
    deadline = time.monotonic() + timeout
    while True:
        response = api.post("retrieve_future", {"request_id": request_id, "allow_metadata_only": True}, headers=headers)
        if response.status_code != 408:
            return response
        assert time.monotonic() < deadline, "future did not finish in time"


def train_output(api: Api, request_id: str) -> pb.ForwardBackwardOutput:
    response = fetch(api, request_id, PROTOBUF)
    assert response.status_code == 200
    assert response.headers["content-type"] == PROTOBUF
    message = pb.ForwardBackwardOutput()
    message.ParseFromString(response.content)
    return message


def logprobs_of(message: pb.ForwardBackwardOutput) -> list[list[float]]:
    """Per datum, as the official client reads a ForwardBackwardOutput."""
    out: list[list[float]] = []
    for record in message.loss_fn_outputs:
        field = record.fields["logprobs"]
        assert field.dtype == pb.DTYPE_FLOAT32
        offsets = np.frombuffer(field.offsets, "<i8")
        assert offsets[0] == 0 and len(offsets) == record.num_datums + 1
        out.extend(np.frombuffer(field.data[a:b], "<f4").tolist() for a, b in itertools.pairwise(offsets))
    return out


@pytest.fixture
def model_id(api: Api) -> str:
    return api.create_model(api.session())


# -- the schema -----------------------------------------------------------------------------


def test_regenerating_the_module_reproduces_the_committed_one(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("grpc_tools")
    proto = "src/tinker_server/wire/tinker_wire.proto"
    out = [f"--python_out={tmp_path}", f"--pyi_out={tmp_path}"]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", "src", *out, proto], cwd=ROOT, check=True)
    for name in ("tinker_wire_pb2.py", "tinker_wire_pb2.pyi"):
        fresh = (tmp_path / "tinker_server" / "wire" / name).read_text()
        committed = (ROOT / "src" / "tinker_server" / "wire" / name).read_text()
        assert fresh == committed, f"{name} is out of date: run `make proto`"


def test_schema_has_a_package_of_its_own() -> None:
    # The official SDK registers tinker_public.* in the default pool; ours must not collide.
    assert pb.DESCRIPTOR.package == "tinker_oss.wire.v1"
    assert pb.ForwardBackwardRequest.DESCRIPTOR.fields_by_name["loss_fn_config_v2"].number == 7
    assert pb.BatchedTensor.DESCRIPTOR.fields_by_name["offsets"].number == 2


# -- forward / forward_backward -------------------------------------------------------------


def test_forward_backward_in_protobuf_equals_json(api: Api, model_id: str) -> None:
    tokens = [[1, 2, 3], [4, 5, 6, 7, 8]]
    json_id = api.ok("forward_backward", fb_body(model_id, 1, [datum(t) for t in tokens]))["request_id"]
    proto_id = submit_proto(api, fb_proto(model_id, 2, [proto_datum(t) for t in tokens]))
    as_json = api.poll(json_id)
    assert api.poll(proto_id) == as_json
    for request_id in (json_id, proto_id):
        message = train_output(api, request_id)
        assert message.loss_fn_output_type == "cross_entropy"
        assert len(message.loss_fn_outputs) == 1 and message.loss_fn_outputs[0].num_datums == 2
        assert dict(message.metrics) == as_json["metrics"] == {"loss:sum": 16.0}
        assert logprobs_of(message) == [out["logprobs"]["data"] for out in as_json["loss_fn_outputs"]]
    assert [len(lp) for lp in logprobs_of(train_output(api, proto_id))] == [3, 5]


def test_forward_only_is_a_forward(api: Api, model_id: str, fake_engines: dict[str, FakeEngine]) -> None:
    request_id = submit_proto(api, fb_proto(model_id, 1, forward_only=True))
    assert dict(train_output(api, request_id).metrics) == {"loss:sum": 6.0}
    calls = [name for name, arg in fake_engines[FAKE_MODEL].calls if arg == model_id]
    assert calls == ["create_adapter", "forward"]
    backward = submit_proto(api, fb_proto(model_id, 2))
    train_output(api, backward)
    assert fake_engines[FAKE_MODEL].calls[-1] == ("forward_backward", model_id)


@pytest.mark.parametrize(
    ("weights", "loss"),
    [
        (dense([0.0, 1.5, 2.0]), 7.0),
        (dense([0.0, 1.5, 2.0], shape=[3]), 7.0),
        (bf16([0.5, 1.0, 2.0]), 7.0),
        (csr([[0.0, 1.5, 2.0]]), 7.0),  # 2-D [1, 3] in CSR form
        (csr([[0.0], [0.0], [3.0]]), 6.0),  # [3, 1], two empty rows
    ],
    ids=["dense", "dense-shaped", "bfloat16", "csr-row", "csr-column"],
)
def test_tensor_encodings(api: Api, model_id: str, weights: pb.Tensor, loss: float) -> None:
    # The fake engine's loss is -sum(weights * logprob) with logprob -2 everywhere.
    message = fb_proto(model_id, 1, [proto_datum([1, 2, 3], weights=weights)])
    assert dict(train_output(api, submit_proto(api, message)).metrics) == {"loss:sum": loss}


def test_int32_targets_zstd_seq_id_none_and_provenance(api: Api, model_id: str) -> None:
    spans = [pb.ProvenanceSpan(sampled_tokens=pb.SampledProvenanceSpan(sequence_id="r:0", offset=0, length=2))]
    item = proto_datum([1, 2, 3], targets=dense([2, 3, 1], pb.DTYPE_INT32))
    item.model_input_spans.extend(spans)
    item.loss_fn_input_spans.extend(spans)
    message = fb_proto(model_id, 0, [item])  # seq_id 0: none given
    first = submit_proto(api, message, zstd=True)
    second = submit_proto(api, message, zstd=True)
    assert first != second  # without a seq_id, a resend is a new request
    assert dict(train_output(api, first).metrics) == {"loss:sum": 6.0}


def test_decoded_datums_keep_their_arrays_and_spans() -> None:
    span = pb.ProvenanceSpan(prompt_tokens=pb.PromptProvenanceSpan(sequence_id="s", offset=1, length=2))
    item = proto_datum([5, 6, 7])
    item.model_input_spans.append(span)
    request = codec.decode_training_request(fb_proto("m", 3, [item]).SerializeToString())
    assert isinstance(request, wire.ForwardBackwardRequest) and request.seq_id == 3
    (decoded,) = request.forward_backward_input.data
    assert isinstance(decoded, wire.ArrayDatum)
    assert isinstance(decoded.chunks[0], np.ndarray) and decoded.chunks[0].tolist() == [5, 6, 7]
    assert decoded.loss_fn_inputs["target_tokens"].array.dtype == np.int64
    assert decoded.model_input_spans == (wire.ProvenanceSpan("prompt", "s", 1, 2),)


def test_loss_config_v2_is_preferred_over_the_legacy_map(api: Api, model_id: str) -> None:
    # cross_entropy takes no config keys: the key named in the 400 tells which map was read.
    legacy = fb_proto(model_id, 1, loss_fn_config={"legacy_key": 1.0})
    assert "legacy_key" in _detail(post_proto(api, legacy))
    both = fb_proto(
        model_id, 2, loss_fn_config={"legacy_key": 1.0}, loss_fn_config_v2={"v2_key": pb.LossConfigValue(text="x")}
    )
    detail = _detail(post_proto(api, both))
    assert "v2_key" in detail and "legacy_key" not in detail
    config = codec.decode_training_request(
        fb_proto(
            "m", 1, loss_fn_config_v2={"a": pb.LossConfigValue(number=0.5), "b": pb.LossConfigValue(text="t")}
        ).SerializeToString()
    ).forward_backward_input.loss_fn_config  # type: ignore[union-attr]
    assert config == {"a": 0.5, "b": "t"}


def test_json_bodies_keep_their_messages(api: Api, model_id: str) -> None:
    body = fb_body(model_id, 1)
    del body["forward_backward_input"]["data"][0]["model_input"]
    assert _detail(api.post("forward_backward", body)) == (
        "invalid request: forward_backward_input.data[0].model_input: field required"
    )
    bad = api.post("forward_backward", content=b"{oops", headers={"Content-Type": "application/json"})
    assert "malformed JSON" in _detail(bad)
    # The same submit-time check, with the same message, for either encoding.
    json_detail = _detail(api.post("forward_backward", fb_body(model_id, 1, [datum([1, 2, 99])])))
    proto_detail = _detail(post_proto(api, fb_proto(model_id, 1, [proto_datum([1, 2, 99])])))
    assert json_detail == proto_detail
    assert "token id 99 is outside the vocabulary" in proto_detail


# -- bad bodies -----------------------------------------------------------------------------


def _detail(response: Any) -> str:
    assert response.status_code == 400, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail", "request_id"} and body["detail"]
    return str(body["detail"])


def _with_datum(model_id: str, mutate: Callable[[pb.Datum], None]) -> bytes:
    item = proto_datum([1, 2, 3])
    mutate(item)
    return fb_proto(model_id, 1, [item]).SerializeToString()


def _set_input(key: str, tensor: pb.Tensor) -> Callable[[pb.Datum], None]:
    return lambda d: d.loss_fn_inputs[key].CopyFrom(tensor)


def _bad_csr(**parts: bytes) -> pb.Tensor:
    tensor = csr([[0.0, 1.0, 2.0]])
    for name, value in parts.items():
        setattr(tensor.sparse_csr, name, value)
    return tensor


BAD_DATUMS: dict[str, tuple[Callable[[pb.Datum], None], str]] = {
    "token bytes": (lambda d: d.model_input[0].encoded_text.__setattr__("tokens", b"\x01\x00\x00\x00\x02"), "int32"),
    "float bytes": (_set_input("weights", pb.Tensor(dense=b"\x00" * 10, dtype=pb.DTYPE_FLOAT32)), "float32"),
    "shape": (_set_input("weights", dense([1.0, 1.0, 1.0], shape=[2, 2])), "shape [2, 2] needs 4 values, got 3"),
    "no dtype": (_set_input("weights", pb.Tensor(dense=b"\x00" * 12)), "DTYPE_UNSPECIFIED"),
    "csr crow": (_set_input("weights", _bad_csr(crow_indices=np.asarray([0, 3, 3], "<i8").tobytes())), "crow_indices"),
    "csr col": (_set_input("weights", _bad_csr(col_indices=np.asarray([1, 7], "<i8").tobytes())), "col_indices"),
    "csr 1-D": (_set_input("weights", pb.Tensor(sparse_csr=pb.SparseCsr(), dtype=pb.DTYPE_FLOAT32)), "2-D"),
    "image": (lambda d: d.model_input.append(pb.Chunk(image=pb.ImageChunk(data=b"png", format="png"))), "image chunks"),
    "dmel": (lambda d: d.model_input.append(pb.Chunk(dmel=pb.DmelChunk(dmel=b"x"))), "dmel chunks"),
    "empty chunk": (lambda d: d.model_input.append(pb.Chunk()), "is empty"),
    "length": (_set_input("weights", dense([1.0, 1.0])), "has 2 values but model_input has 3 tokens"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATUMS))
def test_bad_datums_get_a_400_with_a_sentence(api: Api, model_id: str, case: str) -> None:
    mutate, expected = BAD_DATUMS[case]
    assert expected in _detail(post_proto(api, _with_datum(model_id, mutate)))
    assert dict(train_output(api, submit_proto(api, fb_proto(model_id, 1))).metrics) == {"loss:sum": 6.0}


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b"\xff\xff\xff\xff", {}, "not a valid protobuf ForwardBackwardRequest"),
        (b"", {}, "no model_id"),
        (b"\x28\xb5\x2f\xfd garbage", {"Content-Encoding": "zstd"}, "zstd"),
        (b"not zstd at all", {"Content-Encoding": "zstd"}, "zstd"),
        (b"\x0a\x01m", {"Content-Encoding": "br"}, "Content-Encoding 'br' is not supported"),
    ],
    ids=["undecodable", "empty", "bad-zstd-frame", "not-zstd", "unknown-encoding"],
)
def test_bad_bodies_get_a_400_and_the_server_goes_on(
    api: Api, model_id: str, body: bytes, headers: dict[str, str], expected: str
) -> None:
    response = api.post("forward_backward", content=body, headers={"Content-Type": PROTOBUF, **headers})
    assert expected in _detail(response)
    assert int(response.headers["content-length"]) > 0  # 0.38 retries an empty 400
    assert dict(train_output(api, submit_proto(api, fb_proto(model_id, 1))).metrics) == {"loss:sum": 6.0}


# -- results by negotiation -----------------------------------------------------------------


def test_negotiation_both_ways(api: Api, model_id: str) -> None:
    request_id = submit_proto(api, fb_proto(model_id, 1))
    accept: str | None
    for accept in (PROTOBUF, f"{PROTOBUF}, application/json", "Application/X-Protobuf"):
        response = fetch(api, request_id, accept)
        assert response.headers["content-type"] == PROTOBUF
    for accept in (None, "application/json", "*/*"):
        response = fetch(api, request_id, accept)
        assert response.headers["content-type"] == "application/json"
        assert response.json()["metrics"] == {"loss:sum": 6.0}
    # Results other than training and sampling stay JSON whatever the client accepts.
    step = api.ok("optim_step", {"adam_params": {"learning_rate": 0.1}, "model_id": model_id, "seq_id": 2})
    response = fetch(api, step["request_id"], PROTOBUF)
    assert response.headers["content-type"] == "application/json" and "metrics" in response.json()


def test_try_again_and_failures_stay_json(api: Api, model_id: str, fake_engines: dict[str, FakeEngine]) -> None:
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    try:
        request_id = submit_proto(api, fb_proto(model_id, 1))
        response = api.post("retrieve_future", {"request_id": request_id}, headers={"Accept": PROTOBUF})
        assert response.status_code == 408
        assert response.json() == {
            "type": "try_again",
            "request_id": request_id,
            "queue_state": "active",
            "queue_state_reason": "the request is queued or running; poll again",
        }
    finally:
        engine.gate.set()
    train_output(api, request_id)
    failing = submit_proto(api, fb_proto(model_id, 2, [proto_datum([BAD_TOKEN, 1, 2])]))
    response = fetch(api, failing, PROTOBUF)
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "this datum cannot be trained on", "category": "user"}
    missing = api.post("retrieve_future", {"request_id": "nope"}, headers={"Accept": PROTOBUF})
    assert missing.status_code == 404 and "detail" in missing.json()


def _sampler(api: Api, model_id: str) -> str:
    saved = api.result("save_weights_for_sampler", {"model_id": model_id, "sampling_session_seq_id": 0, "seq_id": 1})
    return str(saved["sampling_session_id"])


def test_sample_in_protobuf_equals_json(api: Api, model_id: str) -> None:
    body = {
        "num_samples": 3,
        "prompt": {"chunks": [{"tokens": [1, 2, 3, 4]}]},
        "sampling_params": {"max_tokens": 5},
        "sampling_session_id": _sampler(api, model_id),
        "seq_id": 0,
        "prompt_logprobs": True,
        "topk_prompt_logprobs": 2,
    }
    submitted = api.ok("asample", body)
    as_json = api.poll(submitted["request_id"])
    response = fetch(api, submitted["request_id"], PROTOBUF)
    assert response.headers["content-type"] == PROTOBUF
    message = pb.SampleResponse()
    message.ParseFromString(response.content)

    # Sequences pair with the submit's sample_sequence_ids by order.
    assert [s["sequence_id"] for s in as_json["sequences"]] == submitted["sample_sequence_ids"]
    assert len(message.sequences) == 3
    for seq, expected in zip(message.sequences, as_json["sequences"], strict=False):
        assert ["stop", "length"][seq.stop_reason] == expected["stop_reason"]
        assert np.frombuffer(seq.tokens, "<i4").tolist() == expected["tokens"]
        assert np.frombuffer(seq.logprobs, "<f4").tolist() == expected["logprobs"]
        assert not seq.HasField("topk_sampled_logprobs")

    prompt = np.frombuffer(message.prompt_logprobs, "<f4")
    assert math.isnan(prompt[0]) and as_json["prompt_logprobs"][0] is None
    assert prompt[1:].tolist() == as_json["prompt_logprobs"][1:] == [-1.0, -1.0, -1.0]

    topk = message.topk_prompt_logprobs
    assert (topk.length, topk.k) == (4, 2)
    ids = np.frombuffer(topk.token_ids, "<i4").reshape(4, 2).tolist()
    logprobs = np.frombuffer(topk.logprobs, "<f4").reshape(4, 2).tolist()
    assert ids[0] == [0, 0] and logprobs[0] == [-99999.0, -99999.0]  # no data at the first position
    assert as_json["topk_prompt_logprobs"][0] is None
    pairs = [[list(p) for p in zip(i, lp, strict=False)] for i, lp in zip(ids[1:], logprobs[1:], strict=False)]
    assert pairs == as_json["topk_prompt_logprobs"][1:]
    assert not message.HasField("target_prompt_logprobs") and not message.HasField("prompt_alt_tokens")


def test_sample_results_round_trip_with_every_optional_part() -> None:
    topk = wire.TopK.from_rows([[(5, -0.5), (6, -1.5)], [(7, -0.25)]])
    result = wire.SampleResult(
        sequences=[
            wire.SequenceResult(
                tokens=np.array([5, 7], np.int32),
                logprobs=np.array([-0.5, -0.25], np.float32),
                stop_reason="stop",
                sequence_id="r:0",
                topk_logprobs=topk,
            )
        ],
        prompt_logprobs=np.array([np.nan, -1.0, -2.0], np.float32),
        topk_prompt_logprobs=wire.TopK.from_rows([None, [(1, -0.5)], [(2, -0.75), (3, -1.0)]]),
        target_prompt_logprobs=np.array([[-0.5, 0.0], [-1.0, -2.0]], np.float32),
        prompt_alt_tokens=(np.array([[1], [2]], np.int32), np.array([[-0.5], [-0.25]], np.float32)),
    )
    back = codec.decode_sample_result(codec.encode_sample_result(result), ["r:0"])
    assert codec.sample_result_json(back) == codec.sample_result_json(result)
    assert back.topk_prompt_logprobs is not None
    assert back.topk_prompt_logprobs.rows() == [None, [(1, -0.5)], [(2, -0.75), (3, -1.0)]]
    assert back.sequences[0].topk_logprobs is not None
    assert back.sequences[0].topk_logprobs.rows() == [[(5, -0.5), (6, -1.5)], [(7, -0.25)]]
    assert back.target_prompt_logprobs is not None and back.prompt_alt_tokens is not None
    assert back.target_prompt_logprobs.tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    assert [a.tolist() for a in back.prompt_alt_tokens] == [[[1], [2]], [[-0.5], [-0.25]]]


def test_train_results_with_different_layouts_use_several_records() -> None:
    result = wire.TrainResult(
        "importance_sampling",
        [
            {"logprobs": np.array([-1.0, -2.0], np.float32)},
            {"logprobs": np.array([-3.0], np.float32)},
            {"logprobs": np.array([-4.0], np.float32), "ids": np.array([[1, 2]], np.int64)},
        ],
        {"loss:sum": 1.5},
    )
    data = codec.encode_train_result(result)
    message = pb.ForwardBackwardOutput()
    message.ParseFromString(data)
    assert [r.num_datums for r in message.loss_fn_outputs] == [2, 1]
    assert list(message.loss_fn_outputs[1].fields["ids"].trailing_shape) == [2]
    back = codec.decode_train_result(data)
    assert json.loads(codec.train_result_json(back)) == json.loads(codec.train_result_json(result))
    assert back.loss_fn_outputs[2]["ids"].tolist() == [[1, 2]]


# -- durability -----------------------------------------------------------------------------


def test_results_survive_a_restart(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server()
    model_id = api.create_model(api.session())
    request_id = submit_proto(api, fb_proto(model_id, 1, [proto_datum([1, 2, 3, 4])]))
    before = fetch(api, request_id, PROTOBUF).content
    as_json = fetch(api, request_id, None).json()
    api.close()

    again = make_fake_server()
    assert fetch(again, request_id, PROTOBUF).content == before
    assert fetch(again, request_id, None).json() == as_json
    assert as_json["loss_fn_outputs"][0]["logprobs"] == {"data": [-2.0] * 4, "dtype": "float32", "shape": [4]}


# -- the real engine ------------------------------------------------------------------------


def test_real_engine_gets_the_same_numbers_from_either_encoding(tmp_path: pathlib.Path) -> None:
    prompts = [[5, 17, 42, 99, 7, 3], [11, 12, 13, 14, 15, 16, 17]]
    with TestClient(create_app(Settings(home=tmp_path, models=[TINY_MODEL], long_poll_s=1.0))) as client:
        api = Api(client)
        sid = api.session()
        lora = {"rank": 4, "seed": 3, "train_unembed": True, "train_mlp": True, "train_attn": True}
        create = {"session_id": sid, "model_seq_id": 0, "base_model": TINY_MODEL, "lora_config": lora}
        model_id = api.result("create_model", create)["model_id"]
        json_fb = api.ok("forward_backward", fb_body(model_id, 1, [datum(p) for p in prompts]))["request_id"]
        proto_fb = submit_proto(api, fb_proto(model_id, 2, [proto_datum(p) for p in prompts]))
        as_json = api.poll(json_fb)
        assert api.poll(proto_fb) == as_json
        assert logprobs_of(train_output(api, json_fb)) == [o["logprobs"]["data"] for o in as_json["loss_fn_outputs"]]

        save = {"model_id": model_id, "sampling_session_seq_id": 0, "seq_id": 3}
        sampler = api.result("save_weights_for_sampler", save)
        body = {
            "num_samples": 2,
            "prompt": {"chunks": [{"tokens": prompts[0]}]},
            "sampling_params": {"max_tokens": 4, "temperature": 0.7, "seed": 1},
            "sampling_session_id": sampler["sampling_session_id"],
            "prompt_logprobs": True,
            "topk_prompt_logprobs": 3,
        }
        request_id = api.ok("asample", body)["request_id"]
        sample_json = api.poll(request_id)
        message = pb.SampleResponse()
        message.ParseFromString(fetch(api, request_id, PROTOBUF).content)
        back = codec.sample_result_json(codec.decode_sample_result(message.SerializeToString(), ["a", "b"]))
        as_proto = json.loads(back)
        for seq in as_proto["sequences"] + sample_json["sequences"]:
            seq.pop("sequence_id")
        assert as_proto == sample_json

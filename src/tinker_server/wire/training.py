"""Training requests and responses: models, forward/backward, optimizer, weights, futures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic

from ._base import Int64, Request, Response, StrictRequest
from .arrays import ArrayDatum
from .tensor import Datum, TensorData

__all__ = [
    "AdamParams",
    "CreateModelRequest",
    "CreateModelResponse",
    "ForwardBackwardInput",
    "ForwardBackwardOutput",
    "ForwardBackwardRequest",
    "ForwardRequest",
    "CancelFutureRequest",
    "FutureRetrieveRequest",
    "GetInfoRequest",
    "GetInfoResponse",
    "LoadWeightsRequest",
    "LoadWeightsResponse",
    "LoraConfig",
    "ModelData",
    "OptimStepRequest",
    "OptimStepResponse",
    "RetrieveFuturesRequest",
    "RetrieveFuturesTarget",
    "SaveWeightsExternalRequest",
    "SaveWeightsExternalResponse",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsRequest",
    "SaveWeightsResponse",
    "UnloadModelRequest",
    "UnloadModelResponse",
    "UntypedAPIFuture",
]

LossConfig = dict[str, float | str]


class LoraConfig(StrictRequest):
    rank: int
    seed: Int64 | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class CreateModelRequest(Request):
    session_id: str

    model_seq_id: Int64
    base_model: str
    user_metadata: dict[str, Any] | None = None
    lora_config: LoraConfig | None = None
    # 0.29+: {"type": "adamw"} (the default) or {"type": "dimuon", "version": 1}.
    optimizer_config: dict[str, Any] | None = None


class CreateModelResponse(Response):
    model_id: str
    type: Literal["create_model"] = "create_model"


def _keep_array_datums(value: Any, handler: pydantic.ValidatorFunctionWrapHandler) -> Any:
    """Datums decoded from protobuf are already checked numpy forms: kept as they are."""
    if isinstance(value, list) and value and all(isinstance(item, ArrayDatum) for item in value):
        return value
    return handler(value)


if TYPE_CHECKING:
    Datums = list[Datum] | list[ArrayDatum]
else:  # JSON bodies (and the API docs) see only Datum.
    Datums = Annotated[list[Datum], pydantic.WrapValidator(_keep_array_datums)]


class ForwardBackwardInput(Request):
    """``data``: :class:`Datum` objects parsed from JSON, or :class:`~.arrays.ArrayDatum`
    objects (numpy arrays) decoded from a protobuf body."""

    data: Datums
    loss_fn: str
    loss_fn_config: LossConfig | None = None


class ForwardRequest(Request):
    forward_input: ForwardBackwardInput
    model_id: str

    seq_id: Int64 | None = None


class ForwardBackwardRequest(Request):
    forward_backward_input: ForwardBackwardInput
    model_id: str

    seq_id: Int64 | None = None


class ForwardBackwardOutput(Response):
    loss_fn_output_type: str
    loss_fn_outputs: list[dict[str, TensorData]]
    metrics: dict[str, float]


class AdamParams(StrictRequest):
    """Adam(W) hyper-parameters; ``weight_decay`` (0.7+) is decoupled, ``grad_clip_norm`` 0 = off."""

    learning_rate: float = 0.0001
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


class OptimStepRequest(Request):
    """``adam_params`` (every version), or ``optimizer_params`` (0.29+, e.g. Dimuon)."""

    model_id: str
    adam_params: AdamParams | None = None
    optimizer_params: dict[str, Any] | None = None

    seq_id: Int64 | None = None


class OptimStepResponse(Response):
    metrics: dict[str, float] | None = None


class SaveWeightsRequest(Request):
    model_id: str
    path: str | None = None

    seq_id: Int64 | None = None
    overwrite: bool = False
    ttl_seconds: int | None = None
    user_metadata: dict[str, Any] | None = None


class SaveWeightsResponse(Response):
    path: str
    type: Literal["save_weights"] = "save_weights"


class LoadWeightsRequest(Request):
    """Two forms: in place (``model_id`` + ``seq_id``; 0.5.1"s PyPI client omits
    ``optimizer``), or creating a model from a checkpoint (0.24+: ``session_id`` +
    ``model_seq_id``, no ``model_id``)."""

    path: str
    model_id: str | None = None

    seq_id: Int64 | None = None
    optimizer: bool = False
    session_id: str | None = None

    model_seq_id: Int64 | None = None
    base_model: str | None = None
    optimizer_config: dict[str, Any] | None = None
    user_metadata: dict[str, Any] | None = None
    weights_access_token: str | None = None


class LoadWeightsResponse(Response):
    omit_if_none = frozenset({"model_id"})
    model_id: str | None = None
    path: str | None = None
    type: Literal["load_weights"] = "load_weights"


class SaveWeightsForSamplerRequest(Request):
    model_id: str
    path: str | None = None

    sampling_session_seq_id: Int64 | None = None
    seq_id: Int64 | None = None
    # 0.38: "snapshot" (frozen copy) or "inflight" (served weights follow the run).
    kind: str = "snapshot"
    ttl_seconds: int | None = None
    user_metadata: dict[str, Any] | None = None


class SaveWeightsForSamplerResponse(Response):
    """Named saves answer ``path``; ephemeral ones ``sampling_session_id`` (``path`` null)."""

    path: str | None = None
    sampling_session_id: str | None = None
    type: Literal["save_weights_for_sampler"] = "save_weights_for_sampler"


class SaveWeightsExternalRequest(Request):
    model_id: str
    path: str | None = None

    seq_id: Int64 | None = None
    ttl_seconds: int | None = None
    age_encryption_recipients: list[str] | None = None


class SaveWeightsExternalResponse(Response):
    omit_if_none = frozenset({"size_bytes"})
    path: str
    size_bytes: int | None = None
    type: Literal["save_weights_external"] = "save_weights_external"


class GetInfoRequest(Request):
    model_id: str


class ModelData(Response):
    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(Response):
    omit_if_none = frozenset({"optimizer_config"})
    type: Literal["get_info"] = "get_info"
    model_data: ModelData
    model_id: str
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None
    optimizer_config: dict[str, Any] | None = None


class UnloadModelRequest(Request):
    model_id: str


class UnloadModelResponse(Response):
    model_id: str
    type: Literal["unload_model"] = "unload_model"


class UntypedAPIFuture(Response):
    """A submit"s answer. ``sample_sequence_ids`` (0.26+) only on ``asample``."""

    omit_if_none = frozenset({"sample_sequence_ids"})
    request_id: str
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None


class FutureRetrieveRequest(Request):
    request_id: str
    allow_metadata_only: bool = False


class RetrieveFuturesTarget(Request):
    type: Literal["sampling_session"] = "sampling_session"
    sampling_session_id: str
    cloned_sampler_id: Int64 = 0


class RetrieveFuturesRequest(Request):
    """``POST /retrieve_futures`` (0.26+): finished sampling requests of one sampler, after a
    cursor. ``timeout`` 0 asks for an immediate answer; absent, the server long-polls."""

    target: RetrieveFuturesTarget
    prev_cursor: Int64 = 0
    timeout: float | None = None
    retrieved_request_ids: list[str] = []  # noqa: RUF012 - pydantic copies a field's default per instance


class CancelFutureRequest(Request):
    request_id: str

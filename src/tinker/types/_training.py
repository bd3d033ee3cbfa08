"""Training requests and responses: models, forward/backward, optimizer, weights."""

from __future__ import annotations

import enum
from typing import Any, Literal

from ._base import BaseModel, StrictBase
from ._tensor import Datum, LossFnOutput

__all__ = [
    "AdamParams",
    "CreateModelRequest",
    "CreateModelResponse",
    "ForwardBackwardInput",
    "ForwardBackwardOutput",
    "ForwardBackwardRequest",
    "ForwardRequest",
    "FutureRetrieveRequest",
    "GetInfoRequest",
    "GetInfoResponse",
    "LoadWeightsRequest",
    "LoadWeightsResponse",
    "LoraConfig",
    "LossFnType",
    "ModelData",
    "ModelID",
    "OptimStepRequest",
    "OptimStepResponse",
    "RequestErrorCategory",
    "RequestFailedResponse",
    "RequestID",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsForSamplerResponseInternal",
    "SaveWeightsRequest",
    "SaveWeightsResponse",
    "TryAgainResponse",
    "UnloadModelRequest",
    "UnloadModelResponse",
    "UntypedAPIFuture",
]

ModelID = str
RequestID = str
LossFnType = Literal["cross_entropy", "importance_sampling", "ppo", "cispo", "dro"]


class RequestErrorCategory(enum.StrEnum):
    Unknown = "unknown"
    Server = "server"
    User = "user"


class LoraConfig(StrictBase):
    rank: int
    seed: int | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class CreateModelRequest(StrictBase):
    session_id: str
    model_seq_id: int
    base_model: str
    user_metadata: dict[str, Any] | None = None
    lora_config: LoraConfig | None = None
    type: Literal["create_model"] = "create_model"


class CreateModelResponse(BaseModel):
    model_id: ModelID
    type: Literal["create_model"] = "create_model"


class ForwardBackwardInput(StrictBase):
    data: list[Datum]
    loss_fn: LossFnType
    loss_fn_config: dict[str, float] | None = None


class ForwardRequest(StrictBase):
    forward_input: ForwardBackwardInput
    model_id: ModelID
    seq_id: int | None = None


class ForwardBackwardRequest(StrictBase):
    forward_backward_input: ForwardBackwardInput
    model_id: ModelID
    seq_id: int | None = None


class ForwardBackwardOutput(BaseModel):
    loss_fn_output_type: str
    loss_fn_outputs: list[LossFnOutput]
    metrics: dict[str, float]


class AdamParams(StrictBase):
    """Adam hyper-parameters. ``weight_decay`` and ``grad_clip_norm`` are extensions
    of this server (the 0.5.1 client never sends them); 0 means off."""

    learning_rate: float = 0.0001
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


class OptimStepRequest(StrictBase):
    adam_params: AdamParams
    model_id: ModelID
    seq_id: int | None = None
    type: Literal["optim_step"] = "optim_step"


class OptimStepResponse(BaseModel):
    metrics: dict[str, float] | None = None


class SaveWeightsRequest(StrictBase):
    model_id: ModelID
    path: str | None = None
    seq_id: int | None = None
    type: Literal["save_weights"] = "save_weights"


class SaveWeightsResponse(BaseModel):
    path: str
    type: Literal["save_weights"] | None = None


class LoadWeightsRequest(StrictBase):
    model_id: ModelID
    path: str
    optimizer: bool
    seq_id: int | None = None
    type: Literal["load_weights"] = "load_weights"


class LoadWeightsResponse(BaseModel):
    path: str | None = None
    type: Literal["load_weights"] | None = None


class SaveWeightsForSamplerRequest(StrictBase):
    model_id: ModelID
    path: str | None = None
    sampling_session_seq_id: int | None = None
    seq_id: int | None = None
    type: Literal["save_weights_for_sampler"] = "save_weights_for_sampler"


class SaveWeightsForSamplerResponseInternal(BaseModel):
    path: str | None = None
    sampling_session_id: str | None = None
    type: Literal["save_weights_for_sampler"] | None = None


class SaveWeightsForSamplerResponse(BaseModel):
    path: str
    type: Literal["save_weights_for_sampler"] | None = None


class GetInfoRequest(StrictBase):
    model_id: ModelID
    type: Literal["get_info"] = "get_info"


class ModelData(BaseModel):
    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(BaseModel):
    type: Literal["get_info"] | None = None
    model_data: ModelData
    model_id: ModelID
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None


class UnloadModelRequest(StrictBase):
    model_id: ModelID
    type: Literal["unload_model"] = "unload_model"


class UnloadModelResponse(BaseModel):
    model_id: ModelID
    type: Literal["unload_model"] | None = None


class UntypedAPIFuture(BaseModel):
    request_id: RequestID
    model_id: ModelID | None = None


class FutureRetrieveRequest(StrictBase):
    request_id: RequestID


class TryAgainResponse(BaseModel):
    type: Literal["try_again"] = "try_again"
    request_id: str
    queue_state: Literal["active", "paused_capacity", "paused_rate_limit"]


class RequestFailedResponse(BaseModel):
    error: str
    category: RequestErrorCategory

"""Sampling requests and responses."""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic

from ._base import Int64, Request, Response, StrictRequest
from .model_input import ModelInput
from .tensor import TensorData

__all__ = [
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "GetSamplerResponse",
    "SampleRequest",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
]


class SamplingParams(StrictRequest):
    """``stop``: a string, a list of strings or a list of token ids. Exactly the fields
    of every official version (0.5.1 … 0.38); any other key is refused."""

    max_tokens: int | None = None
    seed: Annotated[int, pydantic.Field(ge=-(2**63), le=2**64 - 1)] | None = None
    stop: str | list[str] | list[int] | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0


class SampleRequest(Request):
    num_samples: int = 1
    prompt: ModelInput
    sampling_params: SamplingParams
    base_model: str | None = None
    model_path: str | None = None
    sampling_session_id: str | None = None
    seq_id: Int64 | None = None
    prompt_logprobs: bool | None = None
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0  # 0.29
    target_prompt_logprobs: TensorData | None = None  # 0.30: int64 [len(prompt)-1, K], -1 = none
    prompt_alt_tokens_k: int = 0  # 0.31
    prompt_logprobs_last_n: int | None = None  # 0.33
    record_stability_info: bool = False  # 0.26


class SampledSequence(Response):
    omit_if_none = frozenset({"sequence_id", "topk_logprobs"})
    stop_reason: Literal["length", "stop"]
    tokens: list[int]
    logprobs: list[float] | None = None
    sequence_id: str | None = None
    topk_logprobs: list[list[tuple[int, float]]] | None = None


class SampleResponse(Response):
    sequences: list[SampledSequence]
    type: Literal["sample"] = "sample"
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None


class CreateSamplingSessionRequest(Request):
    session_id: str
    sampling_session_seq_id: Int64
    base_model: str | None = None
    model_path: str | None = None


class CreateSamplingSessionResponse(Response):
    type: Literal["create_sampling_session"] = "create_sampling_session"
    sampling_session_id: str


class GetSamplerResponse(Response):
    sampler_id: str
    base_model: str
    model_path: str | None = None

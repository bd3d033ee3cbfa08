"""Sampling requests and responses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ._base import BaseModel, StrictBase
from ._model_input import ModelInput

__all__ = [
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "SampleRequest",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "StopReason",
]

StopReason = Literal["length", "stop"]


class SamplingParams(BaseModel):
    """How to sample. Only the fields you set are sent; the server applies the defaults.

    ``stop`` is a stop string, a list of stop strings, or a list of stop token ids.
    ``temperature=0`` samples greedily; ``top_k=-1`` means no top-k limit.
    """

    max_tokens: int | None = None
    seed: int | None = None
    stop: str | Sequence[str] | Sequence[int] | None = None
    temperature: float = 1
    top_k: int = -1
    top_p: float = 1


class SampleRequest(StrictBase):
    num_samples: int = 1
    prompt: ModelInput
    sampling_params: SamplingParams
    base_model: str | None = None
    model_path: str | None = None
    sampling_session_id: str | None = None
    seq_id: int | None = None
    prompt_logprobs: bool | None = None
    topk_prompt_logprobs: int = 0
    type: Literal["sample"] = "sample"


class SampledSequence(BaseModel):
    stop_reason: StopReason
    tokens: list[int]
    logprobs: list[float] | None = None


class SampleResponse(BaseModel):
    sequences: Sequence[SampledSequence]
    type: Literal["sample"] = "sample"
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None


class CreateSamplingSessionRequest(StrictBase):
    session_id: str
    sampling_session_seq_id: int
    base_model: str | None = None
    model_path: str | None = None
    type: Literal["create_sampling_session"] = "create_sampling_session"


class CreateSamplingSessionResponse(BaseModel):
    type: Literal["create_sampling_session"] = "create_sampling_session"
    sampling_session_id: str

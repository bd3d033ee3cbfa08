"""Training runs, checkpoints and tinker paths."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ._base import BaseModel, StrictBase

__all__ = [
    "Checkpoint",
    "CheckpointArchiveUrlResponse",
    "CheckpointType",
    "CheckpointsListResponse",
    "Cursor",
    "ParsedCheckpointTinkerPath",
    "TrainingRun",
    "TrainingRunsResponse",
    "WeightsInfoRequest",
    "WeightsInfoResponse",
]

CheckpointType = Literal["training", "sampler"]

_KIND_TO_TYPE: dict[str, CheckpointType] = {"weights": "training", "sampler_weights": "sampler"}


class Checkpoint(BaseModel):
    checkpoint_id: str
    checkpoint_type: CheckpointType
    time: datetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = False


class Cursor(BaseModel):
    offset: int
    limit: int
    total_count: int


class CheckpointsListResponse(BaseModel):
    checkpoints: list[Checkpoint]
    cursor: Cursor | None = None


class TrainingRun(BaseModel):
    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    corrupted: bool = False
    lora_rank: int | None = None
    last_request_time: datetime
    last_checkpoint: Checkpoint | None = None
    last_sampler_checkpoint: Checkpoint | None = None
    user_metadata: dict[str, str] | None = None


class TrainingRunsResponse(BaseModel):
    training_runs: list[TrainingRun]
    cursor: Cursor


class WeightsInfoRequest(StrictBase):
    tinker_path: str


class WeightsInfoResponse(BaseModel):
    base_model: str
    is_lora: bool
    lora_rank: int | None = None


class CheckpointArchiveUrlResponse(BaseModel):
    url: str
    expires: datetime


class ParsedCheckpointTinkerPath(BaseModel):
    """A parsed ``tinker://<run-id>/<weights|sampler_weights>/<name>`` path.

    ``checkpoint_id`` keeps the kind: ``weights/<name>`` or ``sampler_weights/<name>``.
    """

    tinker_path: str
    training_run_id: str
    checkpoint_type: CheckpointType
    checkpoint_id: str

    @classmethod
    def from_tinker_path(cls, tinker_path: str) -> ParsedCheckpointTinkerPath:
        prefix = "tinker://"
        if not tinker_path.startswith(prefix):
            raise ValueError(f"Invalid tinker path: {tinker_path}")
        parts = tinker_path[len(prefix) :].split("/")
        if len(parts) != 3 or parts[1] not in _KIND_TO_TYPE:
            raise ValueError(f"Invalid tinker path: {tinker_path}")
        run_id, kind, name = parts
        return cls(
            tinker_path=tinker_path,
            training_run_id=run_id,
            checkpoint_type=_KIND_TO_TYPE[kind],
            checkpoint_id=f"{kind}/{name}",
        )

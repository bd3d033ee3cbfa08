"""Training runs, checkpoints, weights info."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ._base import Request, Response

__all__ = [
    "Checkpoint",
    "CheckpointType",
    "CheckpointsListResponse",
    "Cursor",
    "ExternalWeightsUrlsResponse",
    "SetCheckpointTtlRequest",
    "TrainingRun",
    "TrainingRunsResponse",
    "WeightsInfoRequest",
    "WeightsInfoResponse",
]

CheckpointType = Literal["training", "sampler", "external"]


class Checkpoint(Response):
    omit_if_none = frozenset({"expires_at", "user_metadata"})
    checkpoint_id: str
    checkpoint_type: CheckpointType
    time: datetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = False
    expires_at: datetime | None = None  # 0.9
    user_metadata: dict[str, Any] | None = None  # 0.27


class Cursor(Response):
    offset: int
    limit: int
    total_count: int


class CheckpointsListResponse(Response):
    checkpoints: list[Checkpoint]
    cursor: Cursor | None = None


class TrainingRun(Response):
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


class TrainingRunsResponse(Response):
    training_runs: list[TrainingRun]
    cursor: Cursor


class WeightsInfoRequest(Request):
    tinker_path: str


class WeightsInfoResponse(Response):
    omit_if_none = frozenset({"train_unembed", "train_mlp", "train_attn", "optimizer_config"})
    base_model: str
    is_lora: bool
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None
    optimizer_config: dict[str, Any] | None = None


class SetCheckpointTtlRequest(Request):
    """``PUT …/checkpoints/{id}/ttl`` (0.13+): ``null`` removes the expiry."""

    ttl_seconds: int | None = None


class ExternalWeightsUrlsResponse(Response):
    """Signed, expiring URLs of an external (Hugging Face format) export, one per file."""

    urls: dict[str, str]
    expires: datetime

"""What the console shows, as JSON models: ``/api/v1/console/...`` answers them and the
HTML fragments are rendered from the same objects."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import pydantic

__all__ = [
    "CheckpointView",
    "DownloadLink",
    "MetricPoints",
    "MetricSeries",
    "ModelQueue",
    "Page",
    "PlaygroundChoice",
    "PlaygroundModels",
    "PlaygroundRequest",
    "PlaygroundResult",
    "QueueView",
    "RunDetail",
    "RunSummary",
    "RunsPage",
    "SamplerActivity",
    "SessionView",
    "SessionsPage",
]


class _View(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)


class Page(_View):
    offset: int
    limit: int
    total: int

    @property
    def previous_offset(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < self.total else None

    @property
    def first(self) -> int:
        return min(self.offset + 1, self.total)

    @property
    def last(self) -> int:
        return min(self.offset + self.limit, self.total)


RunStatus = Literal["active", "unloaded", "corrupted"]


class RunSummary(_View):
    run_id: str
    session_id: str
    base_model: str
    lora_rank: int
    created_at: dt.datetime
    last_activity: dt.datetime
    status: RunStatus
    # Why the run is not active (its adapter left memory, or creating it failed).
    status_reason: str | None = None
    checkpoints: int


class RunsPage(_View):
    runs: list[RunSummary]
    page: Page


class MetricSeries(_View):
    """``values[i]`` at ``steps[i]`` (``None`` = NaN): one point per step, or for a long
    run one per bucket of steps (at its middle: the mean of its steps, and in ``lows`` /
    ``highs`` its lowest and highest single value)."""

    kind: str
    name: str
    steps: list[int | float]
    values: list[float | None]
    lows: list[float | None] | None = None
    highs: list[float | None] | None = None


class MetricPoints(_View):
    """One series at full resolution, a page of steps (``next_after``: ask again with
    ``after`` set to it; ``None`` at the end)."""

    x: Literal["step", "seq_id"]
    kind: str
    name: str
    steps: list[int]
    values: list[float | None]
    next_after: int | None


class SamplerActivity(_View):
    sampler_id: str
    source: Literal["checkpoint", "ephemeral", "base model"]
    model_path: str | None
    requests: int
    sequences: int
    tokens: int
    first_time: dt.datetime
    last_time: dt.datetime


class CheckpointView(_View):
    checkpoint_id: str
    checkpoint_type: str
    name: str
    tinker_path: str
    size_bytes: int | None
    time: dt.datetime
    expires_at: dt.datetime | None
    public: bool


class RunDetail(_View):
    run: RunSummary
    lora_config: dict[str, Any]
    user_metadata: dict[str, Any] | None
    # What the metrics' steps count ("seq_id": a run without optimizer steps, one point per
    # request), and how many steps one point stands for (1 = exact).
    metrics_x: Literal["step", "seq_id"]
    metrics_bucket: int
    metrics: list[MetricSeries]
    sampling: list[SamplerActivity]
    checkpoints: list[CheckpointView]
    checkpoints_page: Page


SessionStatus = Literal["alive", "expired", "finished"]


class SessionView(_View):
    session_id: str
    status: SessionStatus
    finished_reason: str | None
    display_name: str | None
    sdk_version: str
    created_at: dt.datetime
    last_heartbeat: dt.datetime
    runs: list[str]
    samplers: int


class SessionsPage(_View):
    sessions: list[SessionView]
    page: Page


class ModelQueue(_View):
    base_model: str
    loaded: bool
    waiting_training: int
    waiting_samples: int
    running: int
    train_tokens_per_s: float
    sampled_tokens_per_s: float
    window_s: float


class QueueView(_View):
    models: list[ModelQueue]


class DownloadLink(_View):
    """A signed archive URL (no API key in it) and when it stops working."""

    url: str
    expires: str


class PlaygroundChoice(_View):
    tinker_path: str
    run_id: str
    name: str
    base_model: str
    time: dt.datetime


class PlaygroundModels(_View):
    base_models: list[str]
    checkpoints: list[PlaygroundChoice]


class PlaygroundRequest(_View):
    """``model_path`` (a sampler or training checkpoint) or ``base_model``; ``chat``
    applies the model's chat template (when it has one) to ``prompt`` as a user turn."""

    model_path: str | None = None
    base_model: str | None = None
    prompt: str = pydantic.Field(min_length=1, max_length=100_000)
    chat: bool = True
    temperature: float = pydantic.Field(default=0.7, ge=0.0, le=10.0)
    max_tokens: int = pydantic.Field(default=64, ge=1, le=4096)
    stop: list[str] = []
    seed: int | None = None


class PlaygroundResult(_View):
    text: str
    tokens: list[int]
    stop_reason: str
    prompt_tokens: int
    chat_template: bool
    base_model: str
    model_path: str | None
    request_id: str

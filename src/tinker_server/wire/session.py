"""Sessions, client configuration, server capabilities, health, telemetry, keys."""

from __future__ import annotations

from typing import Any, Literal

from ._base import Request, Response

__all__ = [
    "ApiKeyInfo",
    "CreateSessionRequest",
    "CreateSessionResponse",
    "GetServerCapabilitiesResponse",
    "GetSessionResponse",
    "HealthResponse",
    "ListSessionsResponse",
    "SessionFinishReason",
    "SessionFinishRequest",
    "SessionHeartbeatRequest",
    "SessionHeartbeatResponse",
    "SupportedModel",
    "TelemetryResponse",
    "TokenizerFilesRequest",
    "TokenizerFilesResponse",
]


class CreateSessionRequest(Request):
    tags: list[str] = []  # noqa: RUF012 - pydantic copies a field's default per instance
    user_metadata: dict[str, Any] | None = None
    sdk_version: str
    project_id: str | None = None  # 0.15
    display_name: str | None = None  # 0.34


class CreateSessionResponse(Response):
    type: Literal["create_session"] = "create_session"
    info_message: str | None = None
    warning_message: str | None = None
    error_message: str | None = None
    session_id: str


class SessionHeartbeatRequest(Request):
    session_id: str


class SessionHeartbeatResponse(Response):
    type: Literal["session_heartbeat"] = "session_heartbeat"


class SessionFinishReason(Request):
    type: Literal["success", "errored", "interrupted"] = "success"


class SessionFinishRequest(Request):
    """``POST /sessions/{id}/finish`` (0.27+)."""

    reason: SessionFinishReason = SessionFinishReason()
    detail: str | None = None


class SupportedModel(Response):
    omit_if_none = frozenset({"max_context_length", "trainable", "sampleable"})
    model_name: str | None = None
    max_context_length: int | None = None
    trainable: bool | None = None
    sampleable: bool | None = None


class GetServerCapabilitiesResponse(Response):
    supported_models: list[SupportedModel]


class HealthResponse(Response):
    status: Literal["ok"]


class GetSessionResponse(Response):
    omit_if_none = frozenset({"display_name", "user_metadata"})
    training_run_ids: list[str]
    sampler_ids: list[str]
    display_name: str | None = None
    user_metadata: dict[str, Any] | None = None


class ListSessionsResponse(Response):
    sessions: list[str]


class TelemetryResponse(Response):
    status: Literal["accepted"] = "accepted"


class TokenizerFilesRequest(Request):
    """Our extension: ``POST /api/v1/tokenizer_files`` for a served model"s tokenizer."""

    tokenizer_id: str


class TokenizerFilesResponse(Response):
    """``files`` maps a file name (no directories) to its text content."""

    tokenizer_id: str
    files: dict[str, str]


class ApiKeyInfo(Response):
    """``GET /api/v1/auth/apikey/me`` (0.26+, used by ``tinker auth login``)."""

    key_id: int
    name: str
    note: str = ""
    details: dict[str, Any] = {}  # noqa: RUF012 - pydantic copies a field's default per instance

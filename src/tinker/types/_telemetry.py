"""Telemetry events the client reports (a server may ignore them)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ._base import BaseModel, StrictBase

__all__ = [
    "EventType",
    "GenericEvent",
    "SessionEndEvent",
    "SessionStartEvent",
    "Severity",
    "TelemetryBatch",
    "TelemetryEvent",
    "TelemetryResponse",
    "TelemetrySendRequest",
    "UnhandledExceptionEvent",
]

Severity = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
EventType = Literal["SESSION_START", "SESSION_END", "UNHANDLED_EXCEPTION", "GENERIC_EVENT"]


class _Event(StrictBase):
    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime


class SessionStartEvent(_Event):
    event: Literal["SESSION_START"] = "SESSION_START"


class SessionEndEvent(_Event):
    event: Literal["SESSION_END"] = "SESSION_END"
    duration: str


class UnhandledExceptionEvent(_Event):
    event: Literal["UNHANDLED_EXCEPTION"] = "UNHANDLED_EXCEPTION"
    error_type: str
    error_message: str
    traceback: str | None = None


class GenericEvent(_Event):
    event: Literal["GENERIC_EVENT"] = "GENERIC_EVENT"
    event_name: str
    event_data: dict[str, object] = {}  # noqa: RUF012 (a pydantic field: the default is copied per instance)


TelemetryEvent = SessionStartEvent | SessionEndEvent | UnhandledExceptionEvent | GenericEvent


class TelemetryBatch(StrictBase):
    events: list[TelemetryEvent]
    platform: str
    sdk_version: str
    session_id: str


TelemetrySendRequest = TelemetryBatch


class TelemetryResponse(BaseModel):
    status: Literal["accepted"]

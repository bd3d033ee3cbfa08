"""A small, well-behaved telemetry sender.

Sends ``SESSION_START`` when a session opens and ``UNHANDLED_EXCEPTION`` when an
operation fails, in batches of up to 100 to ``POST /api/v1/telemetry`` (5 s
timeout, no retries). A batch that fails is dropped: telemetry never delays an
error or a result. ``TINKER_TELEMETRY`` set to anything but 1/true/yes/on
turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import traceback
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import _env
from ._version import __version__
from .types import SessionStartEvent, TelemetryEvent, TelemetrySendRequest, UnhandledExceptionEvent
from .types._base import to_wire

if TYPE_CHECKING:
    from ._http import HTTPClient

__all__ = ["Telemetry", "telemetry_enabled"]

logger = logging.getLogger("tinker")

_MAX_QUEUE = 10_000
_BATCH = 100


def telemetry_enabled() -> bool:
    return _env.telemetry()


class Telemetry:
    """Queue of events for one session, flushed periodically on the background loop."""

    def __init__(self, http: HTTPClient, session_id: str, flush_interval: float) -> None:
        self._http = http
        self._session_id = session_id
        self._flush_interval = flush_interval
        self._queue: deque[TelemetryEvent] = deque()
        self._index = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the flush loop; call on the background loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._push(
            SessionStartEvent(
                event="SESSION_START",
                event_id=str(uuid.uuid4()),
                event_session_index=self._next_index(),
                severity="INFO",
                timestamp=datetime.now(UTC),
            )
        )

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def _next_index(self) -> int:
        index, self._index = self._index, self._index + 1
        return index

    def _push(self, event: TelemetryEvent) -> None:
        if len(self._queue) < _MAX_QUEUE:
            self._queue.append(event)

    def log_exception(self, exc: BaseException, severity: str = "ERROR") -> None:
        """Record a failure and flush soon; callable from the background loop only."""
        event = UnhandledExceptionEvent(
            event="UNHANDLED_EXCEPTION",
            event_id=str(uuid.uuid4()),
            event_session_index=self._next_index(),
            severity="WARNING" if severity == "WARNING" else "ERROR",
            timestamp=datetime.now(UTC),
            error_type=type(exc).__name__,
            error_message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
        )
        self._push(event)
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._flush_interval)
            self._wakeup.clear()

    async def flush(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            request = TelemetrySendRequest(
                events=batch, platform=platform.system(), sdk_version=__version__, session_id=self._session_id
            )
            try:
                await self._http.request(
                    "POST", "api/v1/telemetry", body=to_wire(request), options={"timeout": 5, "max_retries": 0}
                )
            except Exception as exc:  # noqa: BLE001 (telemetry must never disturb the caller)
                logger.debug("dropped %d telemetry events: %s", len(batch), exc)
                return

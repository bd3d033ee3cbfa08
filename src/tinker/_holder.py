"""The client holder: one session with the server, shared by all clients of a ServiceClient.

It owns the HTTP client, the session id and its heartbeat, telemetry, the
per-session counters (``model_seq_id``, ``sampling_session_seq_id``) and the
sampling back-pressure state.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx

from . import _env
from ._http import HTTPClient
from ._retry import execute_with_retries
from ._sync import get_loop, run_sync
from ._telemetry import Telemetry, telemetry_enabled
from ._timings import Timings
from ._version import __version__
from .types import CreateSessionRequest, CreateSessionResponse, SessionHeartbeatResponse
from .types._base import to_wire

__all__ = ["ClientHolder"]

logger = logging.getLogger("tinker")

T = TypeVar("T")

_MAX_SAMPLE_SUBMITS = 400


async def _heartbeat(http: HTTPClient, session_id: str, timings: Timings) -> None:
    last_ok = time.monotonic()
    while True:
        await asyncio.sleep(timings.heartbeat_interval)
        try:
            response = await http.call(
                "POST",
                "api/v1/session_heartbeat",
                SessionHeartbeatResponse,
                body={"session_id": session_id},
                options={"timeout": 10, "max_retries": 0},
            )
            del response
            last_ok = time.monotonic()
        except Exception as exc:  # noqa: BLE001 (any failure is a missed beat; the loop goes on)
            silent = time.monotonic() - last_ok
            if silent > timings.heartbeat_warn_after:
                logger.warning(
                    "Session %s: no successful heartbeat for %.0fs (%s); the server may terminate the session",
                    session_id,
                    silent,
                    exc,
                )


def _shutdown(loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[Any]], http: HTTPClient) -> None:
    def stop() -> None:
        for task in tasks:
            task.cancel()
        loop.create_task(http.aclose())

    if not loop.is_closed():
        loop.call_soon_threadsafe(stop)


class ClientHolder:
    """Session state shared by the clients of one ServiceClient."""

    def __init__(
        self,
        *,
        user_metadata: dict[str, str] | None = None,
        timings: Timings | None = None,
        **http_kwargs: Any,
    ) -> None:
        self.timings = timings or Timings()
        self.http = HTTPClient(timings=self.timings, **http_kwargs)
        self._lock = threading.Lock()
        self._model_seq_id = 0
        self._sampling_session_seq_id = 0
        self._sample_semaphore: asyncio.Semaphore | None = None
        self._sample_backoff_until: float | None = None
        self.telemetry: Telemetry | None = None
        try:
            self.session_id: str = run_sync(self._start(user_metadata))
        except BaseException:
            # No session, no holder: release the connection pool now rather than at GC time.
            run_sync(self.http.aclose())
            raise
        tasks: list[asyncio.Task[Any]] = [self._heartbeat_task]
        if self.telemetry is not None and self.telemetry.task is not None:
            tasks.append(self.telemetry.task)
        self._finalizer = weakref.finalize(self, _shutdown, get_loop(), tasks, self.http)

    async def _start(self, user_metadata: dict[str, str] | None) -> str:
        request = CreateSessionRequest(tags=_env.tags(), user_metadata=user_metadata or {}, sdk_version=__version__)
        response = await self.http.call("POST", "api/v1/create_session", CreateSessionResponse, body=to_wire(request))
        if response.info_message:
            logger.info(response.info_message)
        if response.warning_message:
            logger.warning(response.warning_message)
        if response.error_message:
            logger.error(response.error_message)
        self._heartbeat_task = asyncio.get_running_loop().create_task(
            _heartbeat(self.http, response.session_id, self.timings)
        )
        if telemetry_enabled():
            self.telemetry = Telemetry(self.http, response.session_id, self.timings.telemetry_flush_interval)
            self.telemetry.start()
        return response.session_id

    def close(self) -> None:
        """Stop the heartbeat and telemetry (also done when the holder is garbage-collected)."""
        self._finalizer()

    # -- counters ---------------------------------------------------------------------------

    def next_model_seq_id(self) -> int:
        with self._lock:
            value, self._model_seq_id = self._model_seq_id, self._model_seq_id + 1
        return value

    def next_sampling_session_seq_id(self) -> int:
        with self._lock:
            value, self._sampling_session_seq_id = self._sampling_session_seq_id, self._sampling_session_seq_id + 1
        return value

    # -- retries and telemetry ------------------------------------------------------------

    async def execute_with_retries(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await execute_with_retries(fn, self.timings)

    def report_exception(self, exc: BaseException) -> None:
        """Hand a failure to telemetry (never blocks, never raises); background loop only."""
        if self.telemetry is not None:
            self.telemetry.log_exception(exc)

    # -- sampling back-pressure ---------------------------------------------------------------

    @asynccontextmanager
    async def sample_submit_slot(self) -> AsyncIterator[None]:
        """At most 400 ``asample`` submits in progress per session."""
        if self._sample_semaphore is None:
            self._sample_semaphore = asyncio.Semaphore(_MAX_SAMPLE_SUBMITS)
        async with self._sample_semaphore:
            yield

    def back_off_sampling(self) -> None:
        """After a 429: every sampler of this session waits until now + 1 s."""
        self._sample_backoff_until = self.timings.clock() + self.timings.sample_backoff

    async def wait_for_sampling_backoff(self) -> None:
        while self._sample_backoff_until is not None and self.timings.clock() < self._sample_backoff_until:
            await self.timings.sleep(self.timings.sample_backoff)

    def stuck_request(self, path: str) -> httpx.Request:
        """A request object to attach to errors raised without an HTTP exchange."""
        return httpx.Request("POST", self.http.url(path))

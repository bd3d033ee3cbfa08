"""Durations of the SDK's waits, gathered in one object so tests can shrink them.

Every retry delay goes through ``Timings.sleep`` and every retry deadline
through ``Timings.clock``; a test passes ``ServiceClient(_timings=...)`` with a
fake clock and a sleep that only advances it. The heartbeat period and the
telemetry flush period use real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Timings"]


@dataclass(frozen=True)
class Timings:
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    clock: Callable[[], float] = field(default=time.monotonic)
    # Layer A (HTTP): min(initial * 2**n, max) seconds, times jitter in (0.75, 1].
    http_retry_initial: float = 0.5
    http_retry_max: float = 10.0
    # Layer B (execute_with_retries): min(2**attempt, max) seconds, for at most `total`.
    retry_delay_max: float = 30.0
    retry_total: float = 300.0
    # Future polls after a transport error: min(2**k, max) seconds.
    poll_error_delay_max: float = 30.0
    # Sampling back-off after HTTP 429, checked in steps of this length.
    sample_backoff: float = 1.0
    heartbeat_interval: float = 10.0
    heartbeat_warn_after: float = 120.0
    telemetry_flush_interval: float = 10.0

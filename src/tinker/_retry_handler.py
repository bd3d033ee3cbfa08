"""Retry layer C, for sampling: ``RetryConfig`` and ``RetryHandler``.

A handler caps the sample operations in flight (``max_connections``), retries
a failed one with a fresh submit (``min(base * 2**attempt, max)`` seconds, with
jitter, no limit on the count), and cancels the in-flight work with
``APIConnectionError`` when no sample has completed for ``progress_timeout``
seconds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from ._constants import DEFAULT_CONNECTION_LIMITS
from ._exceptions import APIConnectionError, APIStatusError, RetryableException
from ._retry import is_retryable_status
from ._timings import Timings

__all__ = ["RetryConfig", "RetryHandler", "get_retry_handler"]

logger = logging.getLogger("tinker")

T = TypeVar("T")


def _default_retryable() -> tuple[type[Exception], ...]:
    return (asyncio.TimeoutError, APIConnectionError, httpx.TimeoutException, RetryableException)


@dataclass(frozen=True)
class RetryConfig:
    """How a SamplingClient retries samples. Hashable: one handler per config."""

    max_connections: int = DEFAULT_CONNECTION_LIMITS.max_connections or 1000
    progress_timeout: float = 1800.0
    retry_delay_base: float = 0.5
    retry_delay_max: float = 10.0
    jitter_factor: float = 0.25
    enable_retry_logic: bool = True
    retryable_exceptions: tuple[type[Exception], ...] = field(default_factory=_default_retryable)

    def __post_init__(self) -> None:
        if self.max_connections <= 0:
            raise ValueError(f"max_connections must be positive, got {self.max_connections}")
        if self.progress_timeout <= 0:
            raise ValueError(f"progress_timeout must be positive, got {self.progress_timeout}")
        if self.retry_delay_base < 0 or self.retry_delay_max < 0:
            raise ValueError("retry delays must not be negative")
        if not 0 <= self.jitter_factor <= 1:
            raise ValueError(f"jitter_factor must lie in [0, 1], got {self.jitter_factor}")


class _NoProgressError(APIConnectionError):
    """The progress watchdog fired; never retried."""


class RetryHandler:
    """Runs sample operations under a concurrency cap, retries and a progress watchdog."""

    def __init__(self, config: RetryConfig | None = None, name: str = "", timings: Timings | None = None) -> None:
        self.config = config or RetryConfig()
        self.name = name
        self.timings = timings or Timings()
        self._semaphore: asyncio.Semaphore | None = None
        self._in_flight = 0
        self._last_progress = 0.0

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, self.config.retryable_exceptions):
            return True
        return isinstance(exc, APIStatusError) and is_retryable_status(exc.status_code)

    def retry_delay(self, attempt: int) -> float:
        cfg = self.config
        delay = min(cfg.retry_delay_base * 2.0**attempt, cfg.retry_delay_max)
        delay += delay * cfg.jitter_factor * random.uniform(-1, 1)
        return max(0.0, min(delay, cfg.retry_delay_max))

    async def execute(self, fn: Callable[[], Awaitable[T]], stuck_request: httpx.Request) -> T:
        """Run ``fn`` (a whole sample: submit and poll) until it succeeds or fails for good."""
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.config.max_connections)
        attempt = 0
        while True:
            try:
                async with self._semaphore:
                    return await self._watched(fn, stuck_request)
            except Exception as exc:
                if isinstance(exc, _NoProgressError):
                    raise
                if not self.config.enable_retry_logic or not self.is_retryable(exc):
                    raise
                delay = self.retry_delay(attempt)
                logger.debug("%s: retrying sample after %s in %.2fs", self.name, type(exc).__name__, delay)
                await self.timings.sleep(delay)
                attempt += 1

    async def _watched(self, fn: Callable[[], Awaitable[T]], stuck_request: httpx.Request) -> T:
        loop = asyncio.get_running_loop()
        if self._in_flight == 0:
            self._last_progress = loop.time()
        self._in_flight += 1
        task = asyncio.ensure_future(fn())
        try:
            while True:
                remaining = self._last_progress + self.config.progress_timeout - loop.time()
                done, _ = await asyncio.wait({task}, timeout=max(remaining, 0))
                if done:
                    result = task.result()
                    self._last_progress = loop.time()
                    return result
                if loop.time() - self._last_progress >= self.config.progress_timeout:
                    task.cancel()
                    raise _NoProgressError(
                        message=f"No progress made in {self.config.progress_timeout}s. Requests appear to be stuck.",
                        request=stuck_request,
                    )
        finally:
            self._in_flight -= 1
            if not task.done():
                task.cancel()


@functools.lru_cache(maxsize=100)
def get_retry_handler(sampling_session_id: str, config: RetryConfig | None, timings: Timings) -> RetryHandler:
    """One handler per (sampling session, config), shared by clients of that session."""
    return RetryHandler(config, name=sampling_session_id, timings=timings)

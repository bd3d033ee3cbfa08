"""Retry layer B: ``execute_with_retries``.

Wraps the training-op submits, ``get_server_capabilities``, ``get_info``, the
RestClient calls and the sample submit. Each attempt already carries layer A
(HTTP) retries inside. Retried: ``asyncio.TimeoutError``, ``APIConnectionError``
and ``APIStatusError`` 408/409/429/5xx. Waits ``min(2**attempt, 30)`` seconds
and gives up, re-raising the last error, once 300 s have passed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._exceptions import APIConnectionError, APIStatusError
from ._timings import Timings

__all__ = ["execute_with_retries", "is_retryable_status", "is_layer_b_retryable"]

logger = logging.getLogger("tinker")

T = TypeVar("T")


def is_retryable_status(status_code: int) -> bool:
    return status_code in (408, 409, 429) or status_code >= 500


def is_layer_b_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (asyncio.TimeoutError, APIConnectionError)):
        return True
    return isinstance(exc, APIStatusError) and is_retryable_status(exc.status_code)


async def execute_with_retries(fn: Callable[[], Awaitable[T]], timings: Timings) -> T:
    """Call ``fn`` until it succeeds, a non-retryable error occurs, or time runs out."""
    start = timings.clock()
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not is_layer_b_retryable(exc) or timings.clock() - start >= timings.retry_total:
                raise
            delay = min(2.0**attempt, timings.retry_delay_max)
            logger.debug("retrying after %s (attempt %d, waiting %.1fs)", type(exc).__name__, attempt + 1, delay)
            await timings.sleep(delay)
            attempt += 1

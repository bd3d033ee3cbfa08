"""Futures handed to users.

``APIFuture[T]`` is the abstract, awaitable result of a Tinker call:
``result(timeout)`` blocks, ``await fut`` / ``await fut.result_async(timeout)``
waits without blocking. Both raise the built-in ``TimeoutError`` on timeout,
and neither cancels the underlying work.

``AwaitableConcurrentFuture`` is the concrete kind: it wraps the
``concurrent.futures.Future`` of a coroutine running on the SDK's background
loop, so the work starts when the future is created and its result is
computed once and cached.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import Any, Generic, TypeVar

from typing_extensions import override

from ._sync import in_loop_thread, warn_if_in_event_loop

__all__ = ["APIFuture", "AwaitableConcurrentFuture", "InternalFuture"]

T = TypeVar("T")


class APIFuture(abc.ABC, Generic[T]):
    """The eventual result of an API call."""

    @abc.abstractmethod
    def result(self, timeout: float | None = None) -> T:
        """Block until the result is ready (``TimeoutError`` after ``timeout`` seconds)."""

    @abc.abstractmethod
    async def result_async(self, timeout: float | None = None) -> T:
        """Wait for the result without blocking the event loop."""

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()


class AwaitableConcurrentFuture(APIFuture[T]):
    """An ``APIFuture`` over a ``concurrent.futures.Future``."""

    def __init__(self, future: concurrent.futures.Future[T]) -> None:
        self._future = future

    @override
    def result(self, timeout: float | None = None) -> T:
        if in_loop_thread() and not self._future.done():
            raise RuntimeError("result() would block tinker's own event loop; await the future instead")
        return self._future.result(timeout)

    @override
    async def result_async(self, timeout: float | None = None) -> T:
        wrapped = asyncio.wrap_future(self._future)
        # shield: a timeout here must not cancel the work behind the future.
        return await asyncio.wait_for(asyncio.shield(wrapped), timeout)

    def future(self) -> concurrent.futures.Future[T]:
        return self._future


class InternalFuture(AwaitableConcurrentFuture[T]):
    """The per-request and combined futures of the clients; ``result()`` is sync-only."""

    @override
    def result(self, timeout: float | None = None) -> T:
        warn_if_in_event_loop("result")
        return super().result(timeout)

"""Wake-ups for long polls: who waits for a key hears when it is notified.

:class:`Notifier` is the interface the futures use (``retrieve_future`` and
``/retrieve_futures`` wait on a request id or a sampler's completions). Waiters
re-check the database after every wake-up, so a notifier only has to be prompt, not
exact: a missed wake-up costs at most one long-poll period. :class:`LocalNotifier`
serves one process; several API processes sharing a database need one that crosses
processes (e.g. the database's own LISTEN/NOTIFY), behind the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

__all__ = ["LocalNotifier", "Notifier"]

T = TypeVar("T")


class Notifier(Protocol):
    def notify(self, key: str) -> None:
        """Wake everyone waiting on ``key`` (any thread)."""

    async def wait_for(self, key: str, check: Callable[[], Awaitable[T | None]], timeout: float) -> T | None:
        """``await check()`` until it returns something, re-run whenever ``key`` is
        notified; ``None`` after ``timeout`` seconds (event loop)."""


class LocalNotifier:
    """A :class:`Notifier` within one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def notify(self, key: str) -> None:
        with self._lock:
            waiters = self._waiters.pop(key, [])
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # RuntimeError: that loop is closed; nobody is waiting any more
                loop.call_soon_threadsafe(_set_done, fut)

    async def wait_for(self, key: str, check: Callable[[], Awaitable[T | None]], timeout: float) -> T | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._waiters.setdefault(key, []).append((loop, fut))
            try:
                found = await check()  # registered first: a notify during the check is not lost
                if found is not None:
                    return found
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(asyncio.shield(fut), remaining)
                except TimeoutError:
                    return await check()
            finally:
                with self._lock:
                    waiters = self._waiters.get(key)
                    if waiters is not None:
                        with contextlib.suppress(ValueError):
                            waiters.remove((loop, fut))
                        if not waiters:
                            del self._waiters[key]


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

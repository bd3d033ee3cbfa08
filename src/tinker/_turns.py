"""Submission turns: a TrainingClient's requests reach the server in ``seq_id`` order.

Ids are reserved in the caller's thread at call time; each submit waits on the
background loop for its turn and hands the turn on when its HTTP submit has
returned (or failed, or was cancelled). Results are awaited independently.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["Turns"]


class Turns:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_reserved = 0
        self._next = 1  # loop-side state below: touched on the background loop only
        self._released: set[int] = set()
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def reserve(self, count: int) -> list[int]:
        """Reserve ``count`` consecutive ids (the first op of a client gets 1); thread-safe."""
        with self._lock:
            first = self._last_reserved + 1
            self._last_reserved += count
        return list(range(first, first + count))

    async def wait(self, seq_id: int) -> None:
        if seq_id == self._next:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[seq_id] = waiter
        try:
            await waiter
        finally:
            self._waiters.pop(seq_id, None)

    def release(self, seq_id: int) -> None:
        """Mark ``seq_id`` done (or abandoned) and wake whoever is next."""
        self._released.add(seq_id)
        while self._next in self._released:
            self._released.discard(self._next)
            self._next += 1
        waiter = self._waiters.get(self._next)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

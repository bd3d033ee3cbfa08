"""Holding a run's submits that arrive ahead of their turn.

0.20+ clients send the chunks of one large ``forward_backward`` concurrently and
the first chunk last, so a run may see ``seq_id`` 2, 3, 4 before 1. Operations
of a run must still execute in ``seq_id`` order: a submit whose ``seq_id`` is
ahead of the next expected one is held here until the gap before it fills. A ``seq_id`` whose submit was rejected
(400) is marked used up: it may be sent again, but once a later submit waits
behind it the gap counts as filled.

:class:`SeqReorder` is a small policy object with no threads and no I/O; the
training service calls it under its lock and acts on what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Held", "ReorderFull", "SeqReorder"]

T = TypeVar("T")


class ReorderFull(Exception):
    """Too many submits are held for one run."""


@dataclass
class Held(Generic[T]):
    seq_id: int
    item: T | None  # None: a seq_id that was used up by a rejected submit
    held_at: float


@dataclass
class _RunHold(Generic[T]):
    entries: dict[int, Held[T]] = field(default_factory=dict)


class SeqReorder(Generic[T]):
    """Per run: items keyed by ``seq_id``, released in order once every earlier one is in."""

    def __init__(self, *, max_held: int, gap_timeout_s: float) -> None:
        self.max_held = max_held
        self.gap_timeout_s = gap_timeout_s
        self._runs: dict[str, _RunHold[T]] = {}

    def hold(self, run_id: str, seq_id: int, item: T | None, now: float) -> None:
        """Keep ``item`` until ``release`` reaches ``seq_id``. ``item=None`` marks a used-up id."""
        run = self._runs.setdefault(run_id, _RunHold())
        if item is not None and sum(1 for h in run.entries.values() if h.item is not None) >= self.max_held:
            raise ReorderFull(
                f"{self.max_held} requests of {run_id} are already waiting for an earlier seq_id; retry later"
            )
        run.entries[seq_id] = Held(seq_id, item, now)

    def release(self, run_id: str, last_seq_id: int) -> tuple[int, list[T]]:
        """The held items that follow ``last_seq_id`` without a gap, in order, and the new last id."""
        run = self._runs.get(run_id)
        ready: list[T] = []
        if run is None:
            return last_seq_id, ready
        while last_seq_id + 1 in run.entries:
            last_seq_id += 1
            entry = run.entries.pop(last_seq_id)
            if entry.item is not None:
                ready.append(entry.item)
        if not run.entries:
            del self._runs[run_id]
        return last_seq_id, ready

    def is_held(self, run_id: str, seq_id: int) -> bool:
        """Whether a submit (not a used-up id) is waiting under ``seq_id``."""
        run = self._runs.get(run_id)
        return run is not None and seq_id in run.entries and run.entries[seq_id].item is not None

    def has_items(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        return run is not None and any(h.item is not None for h in run.entries.values())

    def discard(self, run_id: str, seq_id: int) -> None:
        """Forget a used-up mark for ``seq_id`` (the id is being submitted again)."""
        run = self._runs.get(run_id)
        if run is not None and seq_id in run.entries and run.entries[seq_id].item is None:
            del run.entries[seq_id]
            if not run.entries:
                del self._runs[run_id]

    def expire(self, now: float) -> list[tuple[str, list[Held[T]]]]:
        """Give up on gaps older than ``gap_timeout_s``: each such run with every entry held
        for it, in ``seq_id`` order (all dropped from the buffer)."""
        expired: list[tuple[str, list[Held[T]]]] = []
        for run_id, run in list(self._runs.items()):
            oldest = min(h.held_at for h in run.entries.values())
            if now - oldest < self.gap_timeout_s:
                continue
            entries = sorted(run.entries.values(), key=lambda h: h.seq_id)
            del self._runs[run_id]
            expired.append((run_id, entries))
        return expired

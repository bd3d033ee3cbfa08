"""Admission: a tenant's quota (:class:`~.tenants.Quota`) applied to what it submits.

Two kinds of limits:

* Limits that do not clear by waiting (training runs loaded at once, LoRA rank, allowed
  base models, checkpoint storage): :class:`QuotaExceeded`, a 403 with a sentence naming
  the limit and what to do. Never 409 (clients retry that for minutes).
* Limits that clear with time (queued requests, tokens per minute): the request waits
  instead of failing. :class:`RateLimited` is a 429 with ``Retry-After`` (every client
  layer retries it, honouring the header); or, for training operations, the request is
  accepted and held until its start time (:meth:`Admission.schedule`) while polls answer
  the try-again body with ``queue_state: paused_rate_limit``.

Tokens per minute is a sliding window of 60 s over the tokens a tenant's requests put
through the engine: the input tokens of ``forward`` and ``forward_backward``, and the
generated tokens of sampling (counted at submit as ``num_samples * max_tokens`` and
settled to the real count when the result arrives). A tenant may start work while its
window holds fewer tokens than its limit, so one request larger than the limit is never
refused: it runs once the window is empty.

No threads, no database: the services give it the counts (runs, bytes, queued) and it
decides. The token windows are its only state (in memory: a restart forgets them).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .engine.rules import MAX_TOKENS_WHEN_UNSET
from .errors import AccessDenied, Overloaded
from .tenants import Quota

__all__ = ["WINDOW_S", "Admission", "Charge", "QuotaExceeded", "RateLimited", "sample_estimate"]

WINDOW_S = 60.0


def sample_estimate(num_samples: int, max_tokens: int | None) -> int:
    """The most tokens a sampling request may generate (what it is charged at submit)."""
    return max(0, num_samples) * max(0, max_tokens if max_tokens is not None else MAX_TOKENS_WHEN_UNSET)


class QuotaExceeded(AccessDenied):
    """A limit of the key that waiting does not clear (403)."""


class RateLimited(Overloaded):
    """A limit of the key that clears with time (429 with ``Retry-After: retry_after``)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1 and at most 60 (clients honour values up to 60 s)."""
        return str(min(60, max(1, math.ceil(self.retry_after))))


@dataclass(order=True)
class Charge:
    """Tokens counted in a tenant's window at time ``at`` (monotonic seconds)."""

    at: float
    tokens: int = field(compare=False)


class Admission:
    """Applies quotas; keeps each tenant's tokens-per-minute window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, window_s: float = WINDOW_S) -> None:
        self._clock = clock
        self.window_s = window_s
        self._lock = threading.Lock()
        self._windows: dict[str, list[Charge]] = {}  # per tenant, sorted by time

    # -- limits that waiting does not clear --------------------------------------------------

    @staticmethod
    def check_base_model(quota: Quota, base_model: str) -> None:
        if quota.base_models is not None and base_model not in quota.base_models:
            allowed = ", ".join(quota.base_models) or "none"
            raise QuotaExceeded(
                f"this API key may not use base model {base_model!r}; its quota allows: {allowed}",
            )

    @staticmethod
    def check_lora_rank(quota: Quota, rank: int) -> None:
        if quota.max_lora_rank is not None and rank > quota.max_lora_rank:
            raise QuotaExceeded(
                f"LoRA rank {rank} is over this API key's limit of {quota.max_lora_rank}; "
                f"create the model with rank {quota.max_lora_rank} or lower"
            )

    @staticmethod
    def check_training_runs(quota: Quota, loaded: int) -> None:
        """``loaded``: the tenant's training runs not unloaded now."""
        limit = quota.max_training_runs
        if limit is not None and loaded >= limit:
            raise QuotaExceeded(
                f"this API key already has {loaded} training run(s) loaded, its limit is {limit}; "
                "unload one (TrainingClient.unload_model, or end its session) before creating another"
            )

    @staticmethod
    def check_storage(quota: Quota, used_bytes: int) -> None:
        """``used_bytes``: the size of the tenant's checkpoints now."""
        limit = quota.max_checkpoint_bytes
        if limit is not None and used_bytes >= limit:
            raise QuotaExceeded(
                f"this API key's checkpoints take {used_bytes} bytes, its storage limit is {limit} bytes; "
                "delete checkpoints (or give them a ttl) before saving more"
            )

    # -- limits that clear with time --------------------------------------------------------

    @staticmethod
    def check_queued(quota: Quota, queued: int) -> None:
        """``queued``: the tenant's requests queued or running now, on every base model."""
        limit = quota.max_queued_requests
        if limit is not None and queued >= limit:
            raise RateLimited(
                f"this API key has {queued} request(s) queued or running, its limit is {limit}; "
                "retry when some have finished",
                retry_after=1.0,
            )

    def now(self) -> float:
        """This policy's clock (the times :meth:`schedule` answers are on it)."""
        return self._clock()

    def used(self, owner: str, now: float | None = None) -> int:
        """Tokens in the tenant's window at ``now`` (charged in the last ``window_s``)."""
        now = self._clock() if now is None else now
        with self._lock:
            return sum(c.tokens for c in self._window(owner, now) if c.at <= now)

    def schedule(self, owner: str, quota: Quota, tokens: int) -> float:
        """When a training operation of ``tokens`` tokens may start (``clock()`` time): now,
        or once enough of the window has passed; charges it at that time. Starts are kept in
        submit order, so a run's operations never overtake each other."""
        now = self._clock()
        limit = quota.tokens_per_minute
        if limit is None:
            return now
        with self._lock:
            window = self._window(owner, now)
            start = max(now, window[-1].at if window else now)
            start = self._free_at(window, start, limit)
            window.append(Charge(start, max(0, tokens)))
            return start

    def admit(self, owner: str, quota: Quota, tokens: int) -> Charge | None:
        """Charge ``tokens`` now, or raise :class:`RateLimited` with the seconds until the
        window has room. ``None`` when the key has no such limit."""
        limit = quota.tokens_per_minute
        if limit is None:
            return None
        now = self._clock()
        with self._lock:
            window = self._window(owner, now)
            past = [c for c in window if c.at <= now]
            used = sum(c.tokens for c in past)
            if used >= limit:
                wait = self._free_at(past, now, limit) - now
                raise RateLimited(
                    f"this API key used {used} tokens in the last minute, its limit is {limit} tokens per "
                    f"minute; retry in {max(1, math.ceil(wait))} s",
                    retry_after=wait,
                )
            charge = Charge(now, max(0, tokens))
            bisect.insort(window, charge)
            return charge

    def settle(self, charge: Charge | None, tokens: int) -> None:
        """Replace a charge's estimate with the tokens really used."""
        if charge is not None:
            with self._lock:
                charge.tokens = max(0, tokens)

    def adjust(self, charge: Charge | None, delta: int) -> None:
        """Correct a charge by ``delta`` tokens (one part of a request settled)."""
        if charge is not None:
            with self._lock:
                charge.tokens = max(0, charge.tokens + delta)

    def _window(self, owner: str, now: float) -> list[Charge]:  # lock held
        window = self._windows.setdefault(owner, [])
        cut = bisect.bisect_right(window, Charge(now - self.window_s, 0))
        if cut:
            del window[:cut]
        return window

    def _free_at(self, charges: list[Charge], start: float, limit: int) -> float:
        """The first time from ``start`` on when the charges (all at or before ``start``)
        inside the window ending then sum to less than ``limit``."""
        inside = [c for c in charges if c.at > start - self.window_s]
        total = sum(c.tokens for c in inside)
        for charge in inside:
            if total < limit:
                break
            total -= charge.tokens
            start = max(start, charge.at + self.window_s)
        return start

"""Fair share of a base model's engine between tenants: weighted deficit round robin.

The worker of a base model asks :class:`FairShare` which of the queued items go into the
next engine round. Each round every tenant with queued work earns ``quantum * weight``
units of credit (its *deficit*); its items are taken, oldest first, while their cost fits
in its credit, and their cost is taken off it. A tenant whose items are all taken keeps
no credit (an idle tenant cannot save up a burst); one whose next item does not fit
keeps its credit for the next round. So per round a tenant gets about ``quantum * weight``
units of work whatever its queue depth (runs, or queued sampling requests), and a
tenant with one small request is served in the first round it is queued in.

Costs are work units, about tokens: a ``forward``/``forward_backward`` costs its input
tokens, a sampling request its prompt plus the tokens it may generate, any other call
:data:`CALL_COST`. An item costing more than the quantum is not starved: when no
tenant's next item fits, every tenant earns the rounds of credit the cheapest wait needs
at once, so such an item runs after as many rounds as its cost is worth (and alone
tenants never wait).

The policy has no threads and no clock: the worker gives it the candidates (only the
head of each training run's queue, so a run's operations keep their order; every queued
sampling request, in queue order) and it answers the chosen ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["CALL_COST", "DEFAULT_QUANTUM", "Candidate", "FairShare"]

T = TypeVar("T")

# Work units a tenant of weight 1 earns per round (about tokens): two micro-batches'
# worth, so one tenant alone still fills a round well.
DEFAULT_QUANTUM = 4096
# The cost of a call that is not forward/backward or sampling (optimizer step, save, load).
CALL_COST = 256
# Weights are clamped to this range (a zero or negative weight would never be served).
MIN_WEIGHT, MAX_WEIGHT = 0.01, 1000.0


@dataclass(frozen=True)
class Candidate(Generic[T]):
    """A queued item the policy may pick: whose it is and what it costs."""

    item: T
    tenant: str
    cost: int


class FairShare(Generic[T]):
    """Weighted deficit round robin over tenants (one instance per queue kind of a worker).

    ``weight(tenant)`` is the tenant's share against others (default 1 each). Not thread
    safe: the worker calls it with its lock held.
    """

    def __init__(self, quantum: int = DEFAULT_QUANTUM, weight: Callable[[str], float] | None = None) -> None:
        if quantum < 1:
            raise ValueError("quantum must be at least 1")
        self.quantum = quantum
        self._weight = weight or (lambda _tenant: 1.0)
        self._deficit: dict[str, float] = {}
        self._ring: list[str] = []  # the order tenants are visited in; rotated every round

    def credit(self, tenant: str) -> float:
        """The tenant's credit left (tests, diagnostics)."""
        return self._deficit.get(tenant, 0.0)

    def _earn(self, tenant: str) -> float:
        try:
            weight = float(self._weight(tenant))
        except Exception:  # noqa: BLE001 - a weight that cannot be read: the default share
            weight = 1.0
        if not math.isfinite(weight):
            weight = 1.0
        return self.quantum * min(max(weight, MIN_WEIGHT), MAX_WEIGHT)

    def select(self, candidates: Sequence[Candidate[T]], max_items: int | None = None) -> list[T]:
        """The items of the next round, at most ``max_items``; each tenant's in the order given.

        Never empty when ``candidates`` is not (and ``max_items`` is not 0).
        """
        queues: dict[str, list[Candidate[T]]] = {}
        for candidate in candidates:
            queues.setdefault(candidate.tenant, []).append(candidate)
        # Tenants with nothing queued leave: no credit is kept while idle.
        for tenant in [t for t in self._deficit if t not in queues]:
            del self._deficit[tenant]
        self._ring = [t for t in self._ring if t in queues] + [t for t in queues if t not in self._ring]
        if not queues or max_items == 0:
            return []
        earn = {tenant: self._earn(tenant) for tenant in self._ring}
        heads = dict.fromkeys(self._ring, 0)  # index of each tenant's next candidate
        chosen: list[T] = []
        full = False
        while not chosen:
            # When no tenant's next item fits its credit plus one round's, skip ahead the
            # rounds the cheapest wait needs (all tenants earn them), instead of looping.
            rounds = min(
                max(1, math.ceil((queues[t][0].cost - self._deficit.get(t, 0.0)) / earn[t])) for t in self._ring
            )
            for tenant in self._ring:
                self._deficit[tenant] = self._deficit.get(tenant, 0.0) + rounds * earn[tenant]
            # Take one item per tenant in turn (so a cap on the round's items cuts every
            # tenant short alike), each while its next item fits its credit.
            progress = True
            while progress and not full:
                progress = False
                for tenant in self._ring:
                    queue, i = queues[tenant], heads[tenant]
                    if i == len(queue) or queue[i].cost > self._deficit[tenant]:
                        continue
                    if max_items is not None and len(chosen) >= max_items:
                        full = True
                        break
                    self._deficit[tenant] -= queue[i].cost
                    chosen.append(queue[i].item)
                    heads[tenant] = i + 1
                    progress = True
            for tenant in self._ring:
                if heads[tenant] == len(queues[tenant]):
                    self._deficit[tenant] = 0.0  # all it had is in: no credit carried
        # The next round starts with the next tenant, so no one is always first (or cut off
        # by max_items).
        if len(self._ring) > 1:
            self._ring = self._ring[1:] + self._ring[:1]
        return chosen

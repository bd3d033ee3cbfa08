"""Which adapters stay in engine memory: one policy, on the engine's side.

* Training adapters (role ``train``) are pinned: only an explicit drop removes them.
* Sampler adapters (role ``sampler``: checkpoint samplers, which the engine can reload
  from their folder, and frozen snapshots of a training adapter, which it cannot) are
  kept least recently used first out, within three limits: at most ``max_samplers``
  of them, at most ``snapshots_per_source`` snapshots of one training adapter (the
  newest stay), and, when set, at most ``max_sampler_bytes`` of their weights.

A pure policy object: the host tells it what was added, used and dropped, and asks
which adapters to evict now (never those the current round uses). Imports no torch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["Residency", "ResidencyLimits"]


@dataclass(frozen=True)
class ResidencyLimits:
    max_samplers: int = 64
    snapshots_per_source: int = 4
    max_sampler_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_samplers < 1 or self.snapshots_per_source < 1:
            raise ValueError("residency limits: max_samplers and snapshots_per_source must be at least 1")
        if self.max_sampler_bytes is not None and self.max_sampler_bytes < 0:
            raise ValueError("residency limits: max_sampler_bytes must be >= 0")


@dataclass
class _Sampler:
    source: str | None  # the training adapter a snapshot was copied from
    nbytes: int
    order: int  # when it was added (snapshots of one source: the newest are kept)


class Residency:
    def __init__(self, limits: ResidencyLimits) -> None:
        self.limits = limits
        self._samplers: OrderedDict[str, _Sampler] = OrderedDict()  # least recently used first
        self._added = 0

    def added(self, adapter_id: str, role: str, *, source: str | None = None, nbytes: int = 0) -> None:
        """An adapter was created or replaced (a training one is pinned: nothing to track)."""
        self._samplers.pop(adapter_id, None)
        if role == "sampler":
            self._added += 1
            self._samplers[adapter_id] = _Sampler(source, nbytes, self._added)

    def used(self, adapter_id: str) -> None:
        if adapter_id in self._samplers:
            self._samplers.move_to_end(adapter_id)

    def dropped(self, adapter_id: str) -> None:
        self._samplers.pop(adapter_id, None)

    def victims(self, protect: Collection[str] = ()) -> list[tuple[str, str]]:
        """Samplers to evict now, each with the reason, oldest use first; forgets them."""
        limits = self.limits
        out: list[tuple[str, str]] = []
        per_source: dict[str, list[str]] = {}
        for adapter_id, entry in self._samplers.items():
            if entry.source is not None:
                per_source.setdefault(entry.source, []).append(adapter_id)
        for source, ids in per_source.items():
            ids.sort(key=lambda a: self._samplers[a].order)  # oldest snapshot first
            extra = len(ids) - limits.snapshots_per_source
            for adapter_id in ids:
                if extra <= 0:
                    break
                if adapter_id in protect:
                    continue
                out.append(
                    (
                        adapter_id,
                        f"a newer sampler of training run {source} replaced it "
                        f"(the {limits.snapshots_per_source} newest are kept)",
                    )
                )
                extra -= 1
        for adapter_id, _ in out:
            del self._samplers[adapter_id]
        candidates = [a for a in self._samplers if a not in protect]
        while len(self._samplers) > limits.max_samplers and candidates:
            victim = candidates.pop(0)
            del self._samplers[victim]
            out.append((victim, f"it was the least recently used of the {limits.max_samplers} samplers kept in memory"))
        if limits.max_sampler_bytes is not None:
            while sum(s.nbytes for s in self._samplers.values()) > limits.max_sampler_bytes and candidates:
                victim = candidates.pop(0)
                del self._samplers[victim]
                out.append((victim, f"the samplers' memory budget ({limits.max_sampler_bytes} bytes) was reached"))
        return out

    def __len__(self) -> int:
        return len(self._samplers)

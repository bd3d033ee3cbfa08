"""Tenants and their limits: who a request's owner is, and what it may use.

:class:`Quota` is a key's limits (``None``: no limit). :class:`TenantDirectory` is what
the services ask (``quota(owner)``, ``weight(owner)`` for fair scheduling);
:class:`OpenTenants` is the zero-setup mode, where every non-empty key is its own
tenant without limits. Issued keys (``tinker-server admin key create``) give a
directory backed by the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["UNLIMITED", "OpenTenants", "Quota", "TenantDirectory"]


@dataclass(frozen=True)
class Quota:
    """Per-key limits; ``None`` means no limit."""

    max_training_runs: int | None = None  # runs loaded at once (not unloaded, not expired)
    max_lora_rank: int | None = None
    base_models: tuple[str, ...] | None = None  # the base models the key may use
    max_queued_requests: int | None = None  # its requests queued or running at once
    tokens_per_minute: int | None = None  # trained plus sampled tokens, over a sliding minute
    max_checkpoint_bytes: int | None = None  # storage of its checkpoints
    weight: float = 1.0  # its share of the engine against other tenants (fair scheduling)


UNLIMITED = Quota()


class TenantDirectory(Protocol):
    def quota(self, owner: str) -> Quota:
        """The limits of the tenant ``owner`` (an owner id, as :func:`~.auth.owner_for_key` gives)."""


class OpenTenants:
    """Every key is its own tenant, with no limits."""

    def quota(self, owner: str) -> Quota:
        return UNLIMITED

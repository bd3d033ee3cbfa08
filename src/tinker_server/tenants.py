"""Tenants and their limits: who a request's owner is, and what it may use.

:class:`Quota` is a key's limits (``None``: no limit). :class:`TenantDirectory` is what
the services ask (``quota(owner)``; ``Quota.weight`` for fair scheduling).
:class:`OpenTenants` is the zero-setup mode, where every non-empty key is its own
tenant without limits. :class:`DatabaseTenants` is the directory the server runs with:
the owner of an issued key (``tinker-server admin key create``, owner ids
``key-<hex>``) gets the quota stored with that key; any other owner (an open-mode key's
``user-<hash>``) is unlimited, exactly as with :class:`OpenTenants`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import sqlalchemy as sa

from .db import ApiKeyRow, Database

__all__ = [
    "KEY_OWNER_PREFIX",
    "UNLIMITED",
    "DatabaseTenants",
    "OpenTenants",
    "Quota",
    "TenantDirectory",
    "quota_of_row",
]

# Owner ids of issued keys; open-mode keys map to "user-<sha256 prefix>" (auth.owner_for_key).
KEY_OWNER_PREFIX = "key-"


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

    def as_dict(self) -> dict[str, Any]:
        """The limits by name, JSON-ready (``base_models`` a list): the key table's columns,
        and what ``admin key list --json`` and ``GET /api/v1/usage`` show."""
        return {f.name: list(v) if isinstance(v, tuple) else v for f in fields(self) for v in [getattr(self, f.name)]}


UNLIMITED = Quota()


class TenantDirectory(Protocol):
    def quota(self, owner: str) -> Quota:
        """The limits of the tenant ``owner`` (an owner id, as :func:`~.auth.owner_for_key` gives)."""


class OpenTenants:
    """Every key is its own tenant, with no limits."""

    def quota(self, owner: str) -> Quota:
        return UNLIMITED


def quota_of_row(row: ApiKeyRow) -> Quota:
    """The :class:`Quota` stored with an issued key."""
    return Quota(
        max_training_runs=row.max_training_runs,
        max_lora_rank=row.max_lora_rank,
        base_models=tuple(row.base_models) if row.base_models is not None else None,
        max_queued_requests=row.max_queued_requests,
        tokens_per_minute=row.tokens_per_minute,
        max_checkpoint_bytes=row.max_checkpoint_bytes,
        weight=float(row.weight) if row.weight is not None else 1.0,
    )


class DatabaseTenants:
    """Quotas of issued keys, read from the ``api_keys`` table.

    Lookups are cached per owner for ``ttl_s`` seconds (the schedulers ask on every
    submit and selection); keys are created and revoked by another process (the CLI),
    so nothing here is told of changes and a quota read is at most ``ttl_s`` old.
    Authentication never goes through this cache (see ``auth.py``).
    """

    def __init__(self, db: Database, *, ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Quota]] = {}

    def quota(self, owner: str) -> Quota:
        if not owner.startswith(KEY_OWNER_PREFIX):
            return UNLIMITED
        now = self._clock()
        with self._lock:
            hit = self._cache.get(owner)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        with self._db.session() as s:
            row = s.scalars(sa.select(ApiKeyRow).where(ApiKeyRow.owner == owner)).first()
            quota = quota_of_row(row) if row is not None else UNLIMITED
        with self._lock:
            if len(self._cache) >= 10_000:
                self._cache.clear()
            self._cache[owner] = (now, quota)
        return quota

    def forget(self, owner: str | None = None) -> None:
        """Drop cached quotas (all, or one owner's): the next lookup reads the database."""
        with self._lock:
            if owner is None:
                self._cache.clear()
            else:
                self._cache.pop(owner, None)

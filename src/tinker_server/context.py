"""What every service needs: settings, the database, the futures, the scheduler and the tenants."""

from __future__ import annotations

from dataclasses import dataclass, field

from .db import Database
from .futures import FutureHub
from .scheduler import Scheduler
from .settings import Settings
from .tenants import OpenTenants, TenantDirectory

__all__ = ["Context"]


@dataclass
class Context:
    settings: Settings
    db: Database
    futures: FutureHub
    scheduler: Scheduler
    tenants: TenantDirectory = field(default_factory=OpenTenants)

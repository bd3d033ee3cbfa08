"""What every service needs: settings, the database, the futures and the scheduler."""

from __future__ import annotations

from dataclasses import dataclass

from .db import Database
from .futures import FutureHub
from .scheduler import Scheduler
from .settings import Settings

__all__ = ["Context"]


@dataclass
class Context:
    settings: Settings
    db: Database
    futures: FutureHub
    scheduler: Scheduler

"""The console's services, built once per app from its runtime, and the dependency
that hands them to the routes."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Request

from ..api.deps import get_runtime
from ..runtime import Runtime
from .playground import Playground
from .queries import ConsoleQueries

__all__ = ["Console", "ConsoleDep", "get_console"]

_build_lock = threading.Lock()


class Console:
    def __init__(self, runtime: Runtime) -> None:
        self.queries = ConsoleQueries(runtime.db, runtime.scheduler, runtime.run_metrics, runtime.checkpoints)
        self.playground = Playground(
            runtime.db,
            runtime.futures,
            runtime.catalog,
            runtime.sessions,
            runtime.sampling,
            runtime.scheduler.models,
            runtime.settings.long_poll_s,
        )


def get_console(request: Request) -> Console:
    runtime = get_runtime(request)
    console: Console | None = getattr(request.app.state, "console", None)
    if console is None:
        with _build_lock:
            console = getattr(request.app.state, "console", None)
            if console is None:
                console = request.app.state.console = Console(runtime)
    return console


ConsoleDep = Annotated[Console, Depends(get_console)]

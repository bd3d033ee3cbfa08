"""``create_app(settings)``: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from . import __version__
from .api import console_api, futures, metrics as metrics_api, models, oai, runs, sampling, service, sessions, training
from .api.errors import ERROR_RESPONSES, install_error_handlers
from .console import routes as console_routes
from .guards import BodyLimit, HostCheck, install_log_redaction, private_files
from .observability import Metrics, RequestObserver
from .runtime import EngineLoader, Runtime
from .settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, engine_loader: EngineLoader | None = None) -> FastAPI:
    """The Tinker API app. ``engine_loader(model_name)`` overrides how engines are built (tests)."""
    settings = settings if settings is not None else Settings()
    private_files(settings)  # umask 077; home, database and checkpoints owner-only
    install_log_redaction()  # no download-link token in uvicorn's access line
    runtime = Runtime(settings, engine_loader)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.ensure_started()
        sweeper = asyncio.create_task(runtime.run_sweeper(), name="tinker-sweeper")
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await asyncio.to_thread(runtime.stop)

    app = FastAPI(title="Tinker API (open server)", version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = settings
    metrics = app.state.metrics = Metrics(runtime)  # the app's own registry: apps in one process never collide
    runtime.scheduler.observe(metrics.worker)
    # Inner to outer: body caps (413), the Host check (421), then request ids and the access log.
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(HostCheck, settings=settings)
    app.add_middleware(RequestObserver, metrics=metrics)  # request ids, request metrics, the access log
    install_error_handlers(app)
    for module in (service, sessions, models, training, sampling, futures, runs):
        app.include_router(module.router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    # /api/v1/console: the JSON the console reads
    app.include_router(console_api.router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    app.include_router(console_routes.router)  # /console: the web console
    app.include_router(oai.router, responses=ERROR_RESPONSES)  # /oai/api/v1: the OpenAI-compatible endpoints
    app.include_router(metrics_api.router)  # /metrics: Prometheus, no API key
    return app

"""``tinker serve``: run the Tinker API server with uvicorn."""

from __future__ import annotations

import pathlib
from typing import Any

import click

__all__ = ["serve"]


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1; TINKER_HOST).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8000; TINKER_PORT).")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=None,
    help="Folder for metadata and checkpoints (default ~/.tinker; TINKER_HOME).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Base model to serve; repeat for several (default: SmolLM2-135M-Instruct and tinker-test/tiny-llama).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default=None,
    help="Log level (default info).",
)
def serve(
    host: str | None, port: int | None, home: pathlib.Path | None, models: tuple[str, ...], log_level: str | None
) -> None:
    """Serve the Tinker API (/api/v1) on this machine."""
    import logging

    import pydantic
    import uvicorn

    from .app import create_app
    from .settings import Settings

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if home is not None:
        overrides["home"] = home
    if models:
        overrides["models"] = list(models)
    if log_level is not None:
        overrides["log_level"] = log_level
    try:
        settings = Settings(**overrides)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid settings: {problems}") from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"Tinker server on http://{settings.host}:{settings.port} (home {settings.home}; "
        f"models: {', '.join(settings.models)})",
        err=True,
    )
    # Long polls would otherwise hold a shutdown for up to long_poll_s; clients re-poll.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=3)

"""``tinker run``: list and inspect training runs."""

from __future__ import annotations

from typing import Any

import click

from .._command import api_command
from .._listing import limit_option, page_size_option
from .._options import State

PAGE_SIZE = 100  # runs per request


@click.group()
def run() -> None:
    """List and inspect training runs."""


@api_command(run, "list")
@limit_option("training runs")
@page_size_option(PAGE_SIZE)
def list_runs(state: State, limit: int, page_size: int) -> Any:
    """List your training runs, most recent first."""
    from .._client import rest_client
    from .._listing import fetch_with_progress
    from .._views import runs_result

    rest = rest_client(state)

    def fetch_page(count: int, offset: int) -> tuple[list[Any], int | None]:
        response = rest.list_training_runs(limit=count, offset=offset).result()
        return response.training_runs, response.cursor.total_count

    page = fetch_with_progress(fetch_page, limit=limit, page_size=page_size, noun="training runs")
    return runs_result(page)


@api_command(run, "info")
@click.argument("run_id")
def run_info(state: State, run_id: str) -> Any:
    """Show the details of training run RUN_ID."""
    import tinker

    from .._client import rest_client
    from .._errors import CliError
    from .._views import run_result

    rest = rest_client(state)
    try:
        training_run = rest.get_training_run(run_id).result()
    except tinker.NotFoundError as exc:
        raise CliError(
            f"Training run not found: {run_id}",
            f"`tinker run list` shows your runs. Details: {exc}",
        ) from exc
    return run_result(training_run)

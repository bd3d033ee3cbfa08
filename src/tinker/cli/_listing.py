"""Shared plumbing of the list commands: the page-size option and progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from ._paging import Page, fetch

__all__ = ["fetch_with_progress", "limit_option", "page_size_option"]


def limit_option(noun: str) -> Callable[[Any], Any]:
    return click.option(
        "--limit",
        type=click.IntRange(min=0),
        default=20,
        show_default=True,
        help=f"How many {noun} to show; 0 shows all.",
    )


def page_size_option(default: int) -> Callable[[Any], Any]:
    # Hidden: lets tests exercise pagination with a handful of items.
    return click.option("--page-size", type=click.IntRange(min=1), default=default, hidden=True)


def fetch_with_progress(
    fetch_page: Callable[[int, int], tuple[Sequence[Any], int | None]],
    *,
    limit: int,
    page_size: int,
    noun: str,
    counted: bool = True,
) -> Page:
    """:func:`tinker.cli._paging.fetch`, with a progress bar on stderr (when it
    is a terminal) once more than one page is needed."""
    state: dict[str, Any] = {}

    def on_page(received: int, target: int | None) -> None:
        progress = state.get("progress")
        if progress is None:
            if target is not None and received >= target:
                return  # done in one page: no bar
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            from ._output import stderr_console

            console = stderr_console()
            if not console.is_terminal:
                state["progress"] = False
                return
            what = "all" if limit == 0 else str(limit)
            progress = Progress(
                TextColumn(f"Fetching {what} {noun}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
            )
            progress.start()
            state["progress"] = progress
            state["task"] = progress.add_task("fetch", total=target)
        if progress:
            progress.update(state["task"], completed=received, total=target)

    try:
        return fetch(fetch_page, limit, page_size, on_page, counted=counted)
    finally:
        if state.get("progress"):
            state["progress"].stop()

"""The one output sink: commands return a :class:`Result`; :func:`emit` renders it.

* Table mode (default): rich tables on stdout.  Cells are rendered literally —
  no markup, no emoji shortcodes — so a run id such as ``x:train:0`` stays as
  typed.  When stdout is not a terminal the tables are not cut to 80 columns.
* JSON mode: ``json.dumps(indent=2)`` of :attr:`Result.data` and a newline, and
  nothing else on stdout.  Values JSON has no type for are written with
  ``str()``, as 0.5.1 does, so datetimes read ``"2025-11-20 10:00:00+00:00"``.
  Progress bars and notes go to stderr in both modes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import click

__all__ = ["Result", "Table", "emit", "stderr_console"]


@dataclass
class Table:
    title: str | None
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Result:
    """What a command produced: JSON data, and its human form."""

    data: Any
    tables: list[Table] = field(default_factory=list)
    message: str | None = None  # a line for people, in table mode


def _console(stream: Any) -> Any:
    from rich.console import Console

    is_tty = hasattr(stream, "isatty") and stream.isatty()
    width = None if is_tty or os.environ.get("COLUMNS") else 1000
    return Console(file=stream, emoji=False, markup=False, highlight=False, width=width, soft_wrap=False)


def stderr_console() -> Any:
    """A rich console on stderr, for progress bars."""
    from rich.console import Console

    return Console(file=sys.stderr, emoji=False, markup=False, highlight=False)


def _render_table(table: Table) -> Any:
    from rich.table import Table as RichTable
    from rich.text import Text

    rich_table = RichTable(title=Text(table.title) if table.title else None)
    for index, column in enumerate(table.columns):
        if index == 0:
            rich_table.add_column(Text(column), style="bright_cyan", no_wrap=True)
        else:
            rich_table.add_column(Text(column))
    for row in table.rows:
        rich_table.add_row(*(Text(cell) for cell in row))
    return rich_table


def emit(result: Result, output_format: str, err: bool = False) -> None:
    """Render ``result`` on stdout (stderr with ``err``) as tables or JSON."""
    if output_format == "json":
        import json

        click.echo(json.dumps(result.data, indent=2, default=str), err=err)
        return
    if result.tables:
        console = _console(sys.stderr if err else sys.stdout)
        for table in result.tables:
            console.print(_render_table(table))
    if result.message:
        click.echo(result.message, err=err)

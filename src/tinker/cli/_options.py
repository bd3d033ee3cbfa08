"""Options shared by the root group and every API command, defined once.

``--format``, ``--base-url``, ``--api-key`` and ``--debug`` are accepted before
the subcommand (``tinker -f json run list``, as in 0.5.1) and after it
(``tinker run list -f json``).  A value given on the command line wins over one
given to the root group, which wins over the environment, which wins over the
built-in default:

* base URL: ``TINKER_BASE_URL``, else ``http://127.0.0.1:8000`` — where
  ``tinker serve`` listens by default, so a local server is found without setup;
* API key: ``TINKER_API_KEY``, else ``tinker-local`` — the embedded server accepts
  any non-empty key;
* debug: ``TINKER_DEBUG=1`` (show tracebacks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_BASE_URL",
    "State",
    "get_state",
    "shared_options",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_API_KEY = "tinker-local"

_TRUTHY = {"1", "true", "yes", "on"}

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """What the shared options resolved to, stored as the click context object."""

    def __init__(self) -> None:
        self.format: str | None = None
        self.base_url: str | None = None
        self.api_key: str | None = None
        self.debug: bool = False

    @property
    def output_format(self) -> str:
        return self.format or "table"

    @property
    def json(self) -> bool:
        return self.output_format == "json"

    @property
    def resolved_base_url(self) -> str:
        return self.base_url or os.environ.get("TINKER_BASE_URL") or DEFAULT_BASE_URL

    @property
    def resolved_api_key(self) -> str:
        return self.api_key or os.environ.get("TINKER_API_KEY") or DEFAULT_API_KEY

    @property
    def show_traceback(self) -> bool:
        return self.debug or os.environ.get("TINKER_DEBUG", "").strip().lower() in _TRUTHY


def get_state(ctx: click.Context | None = None) -> State:
    ctx = ctx or click.get_current_context()
    return ctx.ensure_object(State)


def _store(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        # Only values given on the command line are stored, so a subcommand's
        # unset option does not hide the root group's.
        if value is None or value is False:
            return
        setattr(get_state(ctx), attr, value)

    return callback


def shared_options(func: F, *, connection: bool = True) -> F:
    """Add ``-f/--format`` and ``--debug``; with ``connection``, also
    ``--base-url`` and ``--api-key``."""
    decorators = [
        click.option(
            "-f",
            "--format",
            type=click.Choice(["table", "json"]),
            default=None,
            expose_value=False,
            callback=_store("format"),
            help="Output format: tables for people (default), JSON for scripts.",
        ),
        click.option(
            "--base-url",
            metavar="URL",
            default=None,
            expose_value=False,
            callback=_store("base_url"),
            help=f"Server URL [env: TINKER_BASE_URL; default: {DEFAULT_BASE_URL}].",
        ),
        click.option(
            "--api-key",
            metavar="KEY",
            default=None,
            expose_value=False,
            callback=_store("api_key"),
            help="API key [env: TINKER_API_KEY; default for a local server: "
            f"{DEFAULT_API_KEY}].",
        ),
        click.option(
            "--debug",
            is_flag=True,
            default=False,
            expose_value=False,
            callback=_store("debug"),
            help="Show tracebacks on errors [env: TINKER_DEBUG=1].",
        ),
    ]
    if not connection:
        decorators = [d for i, d in enumerate(decorators) if i in (0, 3)]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func

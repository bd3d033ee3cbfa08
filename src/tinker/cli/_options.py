"""Options shared by the root group and every API command, defined once.

``--format``, ``--base-url``, ``--api-key`` and ``--debug`` are accepted before
the subcommand (``tinker -f json run list``, as in 0.5.1) and after it
(``tinker run list -f json``).  A value given on the command line wins over one
given to the root group, which wins over the environment, which wins over the
built-in default:

* base URL: ``TINKER_BASE_URL``, else ``http://127.0.0.1:8000`` — where
  ``tinker serve`` listens by default, so a local server is found without setup;
* API key: ``TINKER_API_KEY``, else ``tml-local`` — the embedded server accepts
  any non-empty key;
* debug: ``TINKER_DEBUG=1`` (show tracebacks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import _env
from ._root import DEFAULT_API_KEY, DEFAULT_BASE_URL, SHARED_OPTIONS

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_BASE_URL",
    "State",
    "get_state",
    "shared_options",
]

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
        return self.base_url or _env.base_url() or DEFAULT_BASE_URL

    @property
    def resolved_api_key(self) -> str:
        """The key to send; an explicit ``--api-key`` wins even when empty (an
        error later), an empty ``TINKER_API_KEY`` counts as unset."""
        if self.api_key is not None:
            return self.api_key
        return _env.api_key() or DEFAULT_API_KEY

    @property
    def show_traceback(self) -> bool:
        return self.debug or _env.debug()


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


def _option(attr: str, decls: tuple[str, ...], metavar: str, text: str) -> Callable[[F], F]:
    kwargs: dict[str, Any] = {
        "expose_value": False,
        "callback": _store(attr),
        "help": text,
    }
    if attr == "format":
        kwargs["type"] = click.Choice(["table", "json"])
    elif metavar:
        kwargs["metavar"] = metavar
    else:
        kwargs["is_flag"] = True
    return click.option(*decls, **kwargs)


def shared_options(func: F, *, connection: bool = True) -> F:
    """Add the options of :data:`~tinker.cli._root.SHARED_OPTIONS` to a command.

    Without ``connection``, ``--base-url`` and ``--api-key`` are left out (for
    commands that do not talk to a server).
    """
    for attr, decls, metavar, text in reversed(SHARED_OPTIONS):
        if connection or attr not in ("base_url", "api_key"):
            func = _option(attr, decls, metavar, text)(func)
    return func

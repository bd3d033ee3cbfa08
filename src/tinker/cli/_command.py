"""The decorator that connects a command's return value to the output sink."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from ._options import State, get_state, shared_options
from ._root import SHARED_OPTIONS

__all__ = ["api_command"]


def api_command(
    group: click.Group | None, name: str | None = None, *, connection: bool = True, **attrs: Any
) -> Callable[[Callable[..., Any]], click.Command]:
    """Make ``func(state, **params) -> Result | None`` a command (of ``group``, if given).

    The command gets the shared options (without ``--base-url``/``--api-key``
    when ``connection`` is false); what it returns is rendered by
    :func:`tinker.cli._output.emit` in the chosen format.
    """

    def decorator(func: Callable[..., Any]) -> click.Command:
        @functools.wraps(func)
        def callback(**params: Any) -> None:
            state: State = get_state()
            result = func(state, **params)
            if result is not None:
                from ._output import emit

                emit(result, state.output_format)

        make = group.command if group is not None else click.command
        command = make(name, **attrs)(shared_options(callback, connection=connection))
        # The command's own parameters first, the shared options after them.
        shared = {attr for attr, *_ in SHARED_OPTIONS}
        command.params.sort(key=lambda param: param.name in shared)
        return command

    return decorator

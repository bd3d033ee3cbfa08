"""A click group that imports its subcommands only when they are used.

This is click's lazy-group recipe with one addition: each entry carries its
one-line help, so the parent's ``--help`` lists the commands without importing
any of them.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["LazyGroup"]


class LazyGroup(click.Group):
    """A group whose commands are ``name -> ("module:attribute", "short help")``."""

    def __init__(self, *args: Any, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, tuple[str, str]] = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Same layout as click's, from the static table: listing the commands must
        # not import them.
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands:
                rows.append((name, self.lazy_commands[name][1]))
                continue
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def _load(self, cmd_name: str) -> click.Command:
        import_path, _ = self.lazy_commands[cmd_name]
        module_name, _, attr = import_path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if module_name.startswith(__package__ + "."):
                raise  # a bug in the CLI itself: let it surface
            return _unavailable(cmd_name, self.lazy_commands[cmd_name][1], exc)
        command = getattr(module, attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{import_path} is not a click command")
        return command


def _unavailable(name: str, short_help: str, exc: ImportError) -> click.Command:
    """A stand-in for a command whose optional dependencies are not installed."""

    def callback() -> None:
        from ._errors import CliError

        raise CliError(
            f"The `{name}` command is not available: {exc}",
            "It needs the server extra: pip install 'tinker-oss[server]'",
        )

    return click.Command(
        name,
        callback=callback,
        help=f"{short_help}\n\n(Not installed: pip install 'tinker-oss[server]'.)",
        short_help=short_help,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )

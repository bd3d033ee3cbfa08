"""The click root group of ``tinker`` (the console script goes through ``__main__``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ._lazy import LazyGroup
from ._options import State, get_state, shared_options
from ._root import COMMANDS, root_help

__all__ = ["app"]


class _RootGroup(LazyGroup):
    """Renders the static root help, and turns every failure below it into one
    rendered error (see ``_errors``)."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write(root_help(ctx.command_path))

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        # One State per invocation, shared by every level below the root.
        extra.setdefault("obj", State())
        return super().make_context(info_name, args, parent, **extra)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("prog_name", "tinker")
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            raise click.exceptions.Exit(130) from None
        except Exception as exc:
            from ._errors import translate

            state = get_state(ctx)
            if state.show_traceback:
                import traceback

                traceback.print_exc(file=sys.stderr)
            raise translate(exc, state.resolved_base_url) from exc


@click.group(
    "tinker",
    cls=_RootGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@shared_options
def app() -> None:
    """Manage Tinker training runs, checkpoints and sessions, or run a server."""

"""Entry point of the ``tinker`` command (console script and ``python -m tinker.cli``).

Imports only click and the standard library: subcommands are loaded lazily from
the table below, so ``tinker --help`` imports none of them.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ._lazy import LazyGroup
from ._options import get_state, shared_options

__all__ = ["cli"]

COMMANDS: dict[str, tuple[str, str]] = {
    "version": ("tinker.cli.commands.version:version", "Show the CLI, SDK and API versions."),
    "run": ("tinker.cli.commands.run:run", "List and inspect training runs."),
    "checkpoint": (
        "tinker.cli.commands.checkpoint:checkpoint",
        "List, inspect, download, publish and delete checkpoints.",
    ),
    "session": ("tinker.cli.commands.session:session", "List and inspect client sessions."),
    "serve": ("tinker_server.serve:serve", "Run a Tinker server on this machine."),
}


class _RootGroup(LazyGroup):
    """Turns every failure below it into one rendered error (see ``_errors``)."""

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


_EPILOG = """\b
Configuration:
  TINKER_BASE_URL  server URL (default http://127.0.0.1:8000, where
                   `tinker serve` listens)
  TINKER_API_KEY   API key (default for a local server: tinker-local)
  TINKER_DEBUG=1   show tracebacks on errors

\b
Examples:
  tinker run list --limit 0           every training run
  tinker -f json checkpoint list      JSON for scripts
  tinker checkpoint download tinker://RUN/sampler_weights/final -o models/
"""


@click.group(
    cls=_RootGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_EPILOG,
)
@shared_options
def cli() -> None:
    """Manage Tinker training runs, checkpoints and sessions, or run a server."""


if __name__ == "__main__":
    cli(prog_name="tinker")

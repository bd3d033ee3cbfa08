"""``tinker-server``: the server distribution's own command (no ``tinker`` package needed).

``tinker-server serve`` takes the same options as ``tinker serve`` of our SDK's CLI,
so the server can live in one virtualenv with the official ``tinker`` SDK.
"""

from __future__ import annotations

import click

from . import __version__
from .admin import admin
from .serve import serve

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tinker-server")
def main() -> None:
    """The self-hosted Tinker API server."""


main.add_command(serve)
main.add_command(admin)

"""Entry point of ``tinker`` (the console script, and ``python -m tinker.cli``).

``cli`` answers ``tinker -h`` / ``tinker --help`` from static data without
importing click (see ``_root``), which keeps that command in about a third of
its 50 ms budget.  Everything else — and every attribute, so
``CliRunner().invoke(cli, ...)`` works — goes to the click group
:data:`tinker.cli._app.app`, imported on first use.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click

__all__ = ["cli"]

_HELP_ARGS = (["-h"], ["--help"])


class _Entry:
    """The ``tinker`` command: a lazy stand-in for the click group."""

    @staticmethod
    def _group() -> click.Group:
        from ._app import app

        return app

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs and sys.argv[1:] in _HELP_ARGS:
            from ._root import root_help

            sys.stdout.write(root_help())
            sys.stdout.flush()
            raise SystemExit(0)
        return self._group()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group(), name)

    def __repr__(self) -> str:
        return "<tinker CLI entry point>"


cli = _Entry()

if __name__ == "__main__":
    cli()

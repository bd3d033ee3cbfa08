"""The root command described as plain data, readable without importing click.

``tinker --help`` is answered from here alone (see ``__main__``): importing
click costs about 30 ms on a small machine, more than half of the 50 ms budget
for the whole command.  The click group in :mod:`tinker.cli._app` is built from
the same tables and renders its help with :func:`root_help` too, so both paths
print the same text.
"""

from __future__ import annotations

__all__ = [
    "COMMANDS",
    "DEFAULT_API_KEY",
    "DEFAULT_BASE_URL",
    "SHARED_OPTIONS",
    "root_help",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_API_KEY = "tml-local"

# name -> ("module:attribute", one-line help).  Imported only when run.
COMMANDS: dict[str, tuple[str, str]] = {
    "checkpoint": (
        "tinker.cli.commands.checkpoint:checkpoint",
        "List, inspect, download, publish and delete checkpoints.",
    ),
    "run": ("tinker.cli.commands.run:run", "List and inspect training runs."),
    "serve": ("tinker_server.serve:serve", "Run a Tinker server on this machine."),
    "session": ("tinker.cli.commands.session:session", "List and inspect client sessions."),
    "version": ("tinker.cli.commands.version:version", "Show the CLI, SDK and API versions."),
}

# (attribute, declarations, metavar shown in help, help).  Accepted by the root
# group and by every API command (see ``_options``).
SHARED_OPTIONS: list[tuple[str, tuple[str, ...], str, str]] = [
    ("format", ("-f", "--format"), "[table|json]", "Output format (default: table)."),
    ("base_url", ("--base-url",), "URL", "Server URL [env: TINKER_BASE_URL]."),
    ("api_key", ("--api-key",), "KEY", "API key [env: TINKER_API_KEY]."),
    ("debug", ("--debug",), "", "Show tracebacks on errors [env: TINKER_DEBUG=1]."),
]

_DESCRIPTION = "Manage Tinker training runs, checkpoints and sessions, or run a server."

_EPILOG = f"""\
Configuration:
  TINKER_BASE_URL  server URL; default {DEFAULT_BASE_URL}, where
                   `tinker serve` listens: a local server needs no setup
  TINKER_API_KEY   API key; default {DEFAULT_API_KEY} (a local server takes any key)
  TINKER_DEBUG=1   show tracebacks on errors

Examples:
  tinker run list --limit 0              every training run
  tinker -f json checkpoint list         JSON for scripts (stdout is only JSON)
  tinker checkpoint download tinker://RUN/sampler_weights/NAME -o models

Run `tinker COMMAND -h` for the options of a command."""


def _dl(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(term) for term, _ in rows)
    return [f"  {term.ljust(width)}  {text}".rstrip() for term, text in rows]


def root_help(prog: str = "tinker") -> str:
    """The text of ``tinker --help`` (fixed layout, lines under 80 columns)."""
    options = [
        (", ".join(decls) + (f" {metavar}" if metavar else ""), text) for _, decls, metavar, text in SHARED_OPTIONS
    ]
    options.append(("-h, --help", "Show this message and exit."))
    commands = [(name, text) for name, (_, text) in sorted(COMMANDS.items())]
    lines = [
        f"Usage: {prog} [OPTIONS] COMMAND [ARGS]...",
        "",
        f"  {_DESCRIPTION}",
        "",
        "Options:",
        *_dl(options),
        "",
        "Commands:",
        *_dl(commands),
        "",
        _EPILOG,
    ]
    return "\n".join(lines) + "\n"

"""Errors that render themselves, and the one table that maps SDK errors to them.

Every runtime failure leaves the CLI as a :class:`CliError`: ``Error: <message>``
on stderr, then a short paragraph that names the next step, exit code 1.  Usage
errors stay click's (exit code 2).  Tracebacks are printed only with ``--debug``
or ``TINKER_DEBUG=1``.
"""

from __future__ import annotations

from typing import IO, Any

import click

__all__ = ["CliError", "translate"]


class CliError(click.ClickException):
    """A failure the user can act on: a message and a detail paragraph."""

    exit_code = 1

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"{click.style('Error:', fg='red', bold=True)} {self.message}", err=True)
        if self.detail:
            import textwrap

            detail = textwrap.fill(self.detail, width=79, break_long_words=False, break_on_hyphens=False)
            click.echo(detail, err=True)


def _details(exc: BaseException) -> str:
    return f"Details: {exc}"


def translate(exc: BaseException, base_url: str) -> CliError:
    """Turn an exception raised by a command into the message a user sees."""
    if isinstance(exc, CliError):
        return exc
    try:
        import tinker
    except ImportError as import_error:  # pragma: no cover - a broken install
        return CliError(
            f"Failed to import the Tinker SDK: {import_error}",
            "Reinstall the package: pip install --force-reinstall tinker-oss",
        )

    start_hint = (
        "Start a local server with `tinker serve` (it listens on "
        "http://127.0.0.1:8000 by default), or point --base-url / TINKER_BASE_URL "
        "at a running server."
    )
    # Order matters: subclasses before their bases.
    if isinstance(exc, tinker.APITimeoutError):
        return CliError(
            f"The server at {base_url} did not answer in time.",
            f"Check that it is running and not overloaded, then retry. {_details(exc)}",
        )
    if isinstance(exc, tinker.APIConnectionError):
        return CliError(f"Cannot reach a Tinker server at {base_url}.", start_hint)
    if isinstance(exc, tinker.AuthenticationError):
        return CliError(
            "Authentication failed: the server rejected the API key.",
            "Set TINKER_API_KEY (or pass --api-key) to a key this server accepts. " + _details(exc),
        )
    if isinstance(exc, tinker.PermissionDeniedError):
        return CliError(
            "Permission denied.",
            "Only the owner of a training run can change it; check that TINKER_API_KEY "
            "is the owner's key. " + _details(exc),
        )
    if isinstance(exc, tinker.NotFoundError):
        return CliError(
            "Resource not found.",
            "Check the id or path: `tinker run list` and `tinker checkpoint list` show what exists. " + _details(exc),
        )
    if isinstance(exc, tinker.BadRequestError):
        return CliError("Invalid request.", _details(exc))
    if isinstance(exc, tinker.UnprocessableEntityError):
        return CliError("Invalid data provided.", _details(exc))
    if isinstance(exc, tinker.ConflictError):
        return CliError("Conflict (status 409).", _details(exc))
    if isinstance(exc, tinker.RateLimitError):
        return CliError("Rate limit exceeded.", "Wait a moment and try again. " + _details(exc))
    if isinstance(exc, tinker.InternalServerError):
        return CliError(
            f"The server failed (status {exc.status_code}).",
            "This is a problem on the server side: look at the server's log "
            "(`tinker serve` prints it) and retry. " + _details(exc),
        )
    if isinstance(exc, tinker.APIStatusError):
        return CliError(f"API error (status {exc.status_code}).", _details(exc))
    if isinstance(exc, tinker.APIError):
        return CliError("API error occurred.", _details(exc))
    if isinstance(exc, tinker.TinkerError):
        return CliError(f"{exc}", "Check --base-url / TINKER_BASE_URL and --api-key / TINKER_API_KEY.")
    return CliError(
        f"Unexpected error: {type(exc).__name__}: {exc}",
        "Run again with --debug (or TINKER_DEBUG=1) to see the traceback, and report it if it looks like a bug.",
    )

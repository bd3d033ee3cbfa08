"""``tinker session``: list and inspect client sessions."""

from __future__ import annotations

from typing import Any

import click

from .._command import api_command
from .._listing import limit_option, page_size_option
from .._options import State

PAGE_SIZE = 100  # sessions per request


@click.group()
def session() -> None:
    """List and inspect client sessions (one per ServiceClient)."""


@api_command(session, "list")
@limit_option("sessions")
@page_size_option(PAGE_SIZE)
def list_sessions(state: State, limit: int, page_size: int) -> Any:
    """List your sessions."""
    from .._client import rest_client
    from .._listing import fetch_with_progress
    from .._views import sessions_result

    rest = rest_client(state)

    def fetch_page(count: int, offset: int) -> tuple[list[str], int | None]:
        return rest.list_sessions(limit=count, offset=offset).result().sessions, None

    page = fetch_with_progress(fetch_page, limit=limit, page_size=page_size, noun="sessions", counted=False)
    return sessions_result(page)


@api_command(session, "info")
@click.argument("session_id")
def session_info(state: State, session_id: str) -> Any:
    """Show the training runs and samplers of session SESSION_ID."""
    import tinker

    from .._client import rest_client
    from .._errors import CliError
    from .._views import session_result

    rest = rest_client(state)
    try:
        response = rest.get_session(session_id).result()
    except tinker.NotFoundError as exc:
        raise CliError(
            f"Session not found: {session_id}",
            f"`tinker session list` shows your sessions. Details: {exc}",
        ) from exc
    return session_result(session_id, response)

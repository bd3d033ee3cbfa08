"""Building the SDK's RestClient for a command (imports the SDK on first use)."""

from __future__ import annotations

from typing import Any

from ._options import State

__all__ = ["CLI_MAX_RETRIES", "rest_client"]

# The SDK's default (10 HTTP retries with back-off, about a minute) suits a
# training loop; a person at a terminal wants "no server" in about a second.
CLI_MAX_RETRIES = 1


def rest_client(state: State) -> Any:
    """A ``tinker`` RestClient for the configured server (opens a session)."""
    import tinker

    api_key = state.resolved_api_key
    service = tinker.ServiceClient(
        api_key=api_key,
        base_url=state.resolved_base_url,
        max_retries=CLI_MAX_RETRIES,
        # The SDK lets TINKER_API_KEY override the api_key argument (0.5.1
        # quirk Q1); an explicit --api-key must win, so send it as a header too.
        default_headers={"X-API-Key": api_key},
    )
    return service.create_rest_client()

"""Building the SDK's RestClient for a command (imports the SDK on first use)."""

from __future__ import annotations

from typing import Any

from ._options import State

__all__ = ["CLI_MAX_RETRIES", "rest_client"]

# The SDK's defaults suit a training loop: 10 HTTP retries with back-off (about a
# minute) and, around most REST calls, retries for up to 300 s on connection
# errors, 408/409/429 and 5xx.  A person at a terminal wants "no server" in
# about a second and a failing server reported within seconds.
CLI_MAX_RETRIES = 1
CLI_RETRY_TOTAL_S = 10.0


def rest_client(state: State) -> Any:
    """A ``tinker`` RestClient for the configured server (opens a session)."""
    import tinker
    from tinker._timings import Timings

    api_key = state.resolved_api_key.strip()
    if not api_key or not api_key.isprintable():
        from ._errors import CliError

        raise CliError(
            "The API key is empty or not printable.",
            "Pass --api-key KEY or set TINKER_API_KEY (a local `tinker serve` accepts any non-empty key).",
        )
    service = tinker.ServiceClient(
        api_key=api_key,
        base_url=state.resolved_base_url,
        max_retries=CLI_MAX_RETRIES,
        # The SDK lets TINKER_API_KEY override the api_key argument (0.5.1
        # quirk Q1); an explicit --api-key must win, so send it as a header too.
        default_headers={"X-API-Key": api_key},
        # Private seam of the SDK (same distribution): shorter REST-level retries.
        _timings=Timings(retry_total=CLI_RETRY_TOTAL_S),
    )
    return service.create_rest_client()

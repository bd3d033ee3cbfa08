"""``tinker version``: versions of the CLI, the SDK and the API it speaks."""

from __future__ import annotations

from .._command import api_command
from .._options import State

# The HTTP API generation (the /api/v1 prefix) and the Tinker release whose wire
# protocol this client speaks.
API_VERSION = "v1"
PROTOCOL_VERSION = "0.5.1"


def _sdk_version() -> str | None:
    try:
        from tinker._version import __version__
    except ImportError:
        return None
    return __version__


@api_command(None, "version", connection=False)
def version(state: State) -> object:
    """Show the CLI and SDK versions, and the API version they speak."""
    from .._output import Result

    sdk = _sdk_version()
    cli_version = sdk  # the CLI ships in the same distribution as the SDK
    data = {
        "cli": cli_version,
        "sdk": sdk,
        "api": API_VERSION,
        "protocol": PROTOCOL_VERSION,
    }
    if state.json:
        return Result(data)
    shown = cli_version or "(version unavailable)"
    return Result(
        data,
        message=(
            f"tinker {shown}\n"
            f"SDK: {sdk or '(version unavailable)'}\n"
            f"API: {API_VERSION} (Tinker {PROTOCOL_VERSION} wire protocol)"
        ),
    )

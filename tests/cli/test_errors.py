"""Errors: one paragraph naming the next step, exit 1; usage errors exit 2."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import tinker
from tinker.cli._errors import translate
from tinker.cli._options import DEFAULT_API_KEY, DEFAULT_BASE_URL, State

from .conftest import closed_port_url
from .fake_api import FakeApi, fake_api

# When ServiceClient() fails (401, 500 on create_session) the SDK leaves its
# connection to be closed by the garbage collector, which warns.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_leaked_clients() -> Iterator[None]:
    """Let those warnings fire here, where they are ignored, not in a later test."""
    yield
    gc.collect()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with fake_api() as api:
        yield api


def test_no_server(invoke: Any) -> None:
    url = closed_port_url()
    for args, env in [
        (["--base-url", url, "run", "list"], None),
        (["run", "list", "--base-url", url], None),
        (["-f", "json", "checkpoint", "list"], {"TINKER_BASE_URL": url}),
    ]:
        result = invoke(*args, env=env)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert f"Error: Cannot reach a Tinker server at {url}." in result.stderr
        assert "tinker serve" in result.stderr and "TINKER_BASE_URL" in result.stderr
        assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(invoke: Any) -> None:
    url = closed_port_url()
    result = invoke("--debug", "--base-url", url, "run", "list")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "Error: Cannot reach a Tinker server" in result.stderr
    result = invoke("--base-url", url, "run", "list", env={"TINKER_DEBUG": "1"})
    assert "Traceback (most recent call last)" in result.stderr


def test_defaults_find_a_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    state = State()
    assert (state.resolved_base_url, state.resolved_api_key) == (DEFAULT_BASE_URL, DEFAULT_API_KEY)
    assert DEFAULT_BASE_URL == "http://127.0.0.1:8000"
    monkeypatch.setenv("TINKER_BASE_URL", "http://example:1")
    monkeypatch.setenv("TINKER_API_KEY", "env-key")
    assert (state.resolved_base_url, state.resolved_api_key) == ("http://example:1", "env-key")
    state.base_url, state.api_key = "http://flag:2", "flag-key"
    assert (state.resolved_base_url, state.resolved_api_key) == ("http://flag:2", "flag-key")


def test_empty_api_key(invoke: Any) -> None:
    result = invoke("run", "list", "--api-key", "", "--base-url", closed_port_url())
    assert result.exit_code == 1
    assert "Error: The API key is empty" in result.stderr


def test_rejected_api_key(invoke: Any, api: FakeApi) -> None:
    api.session_status = 401
    result = invoke("--base-url", api.url, "run", "list")
    assert result.exit_code == 1
    assert "Error: Authentication failed" in result.stderr
    assert "TINKER_API_KEY" in result.stderr


def test_server_error(invoke: Any, api: FakeApi) -> None:
    api.session_status = 500
    result = invoke("--base-url", api.url, "session", "list")
    assert result.exit_code == 1
    assert "Error: The server failed (status 500)." in result.stderr
    assert "server's log" in result.stderr


def test_not_found_from_the_api(invoke: Any, api: FakeApi) -> None:
    api.status = 404
    result = invoke("--base-url", api.url, "run", "list")
    assert result.exit_code == 1
    assert "Error: Resource not found." in result.stderr
    assert "fake failure 404" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["-f", "xml", "run", "list"],
        ["run", "info"],
        ["run", "list", "--limit", "-1"],
        ["checkpoint", "download"],
        ["run", "list", "--no-such-option"],
        [],
    ],
)
def test_usage_errors_exit_2(invoke: Any, args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Usage: tinker" in result.output


def _status_error(cls: type[tinker.APIStatusError], status: int) -> tinker.APIStatusError:
    request = httpx.Request("GET", "http://x/api/v1/training_runs")
    response = httpx.Response(status, request=request, json={"detail": "boom"})
    return cls(f"Error code: {status} - {{'detail': 'boom'}}", response=response, body={"detail": "boom"})


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (_status_error(tinker.BadRequestError, 400), "Invalid request."),
        (_status_error(tinker.AuthenticationError, 401), "Authentication failed"),
        (_status_error(tinker.PermissionDeniedError, 403), "Permission denied."),
        (_status_error(tinker.NotFoundError, 404), "Resource not found."),
        (_status_error(tinker.ConflictError, 409), "Conflict (status 409)."),
        (_status_error(tinker.UnprocessableEntityError, 422), "Invalid data provided."),
        (_status_error(tinker.RateLimitError, 429), "Rate limit exceeded."),
        (_status_error(tinker.InternalServerError, 503), "The server failed (status 503)."),
        (_status_error(tinker.APIStatusError, 418), "API error (status 418)."),
        (tinker.APITimeoutError(httpx.Request("GET", "http://x")), "did not answer in time"),
        (tinker.APIConnectionError(request=httpx.Request("GET", "http://x")), "Cannot reach"),
        (RuntimeError("kaput"), "Unexpected error: RuntimeError: kaput"),
    ],
)
def test_translate(exc: Exception, message: str) -> None:
    error = translate(exc, "http://x")
    assert message in error.message
    assert error.exit_code == 1
    assert error.detail

"""The HTTP layer as the server sees it: headers, base URL, API key, retry layers A and B."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import tinker
from tinker._http import HTTPClient

from .conftest import BASE_URL, FakeClock, FakeServer, json_of

MakeClient = Callable[..., tinker.ServiceClient]


def test_headers_of_post_and_get(server: FakeServer, client: tinker.ServiceClient) -> None:
    server.route("GET", "/api/v1/get_server_capabilities")(
        lambda r: httpx.Response(200, json={"supported_models": [{"model_name": "m"}]})
    )
    caps = client.get_server_capabilities()
    assert caps.supported_models[0].model_name == "m"

    post = server.calls("/api/v1/create_session")[0]
    h = post.headers
    assert h["accept"] == "application/json"
    assert h["content-type"] == "application/json"
    assert h["user-agent"] == "AsyncTinker/Python 0.5.1"
    assert h["x-api-key"] == "test-key"
    assert h["x-stainless-package-version"] == "0.5.1"
    assert h["x-stainless-async"] == "async:asyncio"
    assert h["x-stainless-runtime"] == platform.python_implementation()
    assert h["x-stainless-runtime-version"] == platform.python_version()
    assert h["x-stainless-os"] and h["x-stainless-arch"]
    assert h["x-stainless-retry-count"] == "0"
    assert h["x-stainless-read-timeout"] == "60"
    assert h["x-idempotency-key"].startswith("stainless-python-retry-")
    assert "authorization" not in h
    assert json_of(post) == {"tags": [], "user_metadata": {}, "sdk_version": "0.5.1"}

    get = server.calls("/api/v1/get_server_capabilities")[0]
    assert "content-type" not in get.headers
    assert "x-idempotency-key" not in get.headers
    assert get.headers["accept"] == "application/json"


def test_base_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert str(HTTPClient(api_key="k").base_url) == "https://tinker.thinkingmachines.dev/services/tinker-prod/"
    monkeypatch.setenv("TINKER_BASE_URL", "http://env.example/p")
    assert str(HTTPClient(api_key="k").base_url) == "http://env.example/p/"
    assert str(HTTPClient(api_key="k", base_url="http://arg.example").base_url) == "http://arg.example/"


def test_base_url_path_prefix(server: FakeServer, make_client: MakeClient) -> None:
    make_client(base_url="http://tinker.test/some/prefix")
    assert server.requests[0].url == "http://tinker.test/some/prefix/api/v1/create_session"


def test_api_key_resolution(server: FakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(tinker.TinkerError, match="TINKER_API_KEY"):
        make_client(api_key=None)
    assert server.requests == []

    monkeypatch.setenv("TINKER_API_KEY", "env-key")
    make_client(api_key=None)
    assert server.requests[-1].headers["x-api-key"] == "env-key"
    # Quirk Q1: the environment key is injected as a default header and wins over the argument.
    make_client(api_key="arg-key")
    assert server.requests[-1].headers["x-api-key"] == "env-key"
    monkeypatch.delenv("TINKER_API_KEY")
    make_client(api_key="arg-key")
    assert server.requests[-1].headers["x-api-key"] == "arg-key"


def test_cloudflare_and_custom_headers(
    server: FakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDFLARE_ACCESS_CLIENT_ID", "cf-id")
    monkeypatch.setenv("CLOUDFLARE_ACCESS_CLIENT_SECRET", "cf-secret")
    make_client(default_headers={"X-Custom": "1"})
    h = server.requests[0].headers
    assert (h["cf-access-client-id"], h["cf-access-client-secret"], h["x-custom"]) == ("cf-id", "cf-secret", "1")


def test_session_request_carries_tags_and_metadata(
    server: FakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_TAGS", "b,a,b")
    make_client(user_metadata={"u": "1"})
    body = json_of(server.requests[0])
    assert sorted(body["tags"]) == ["a", "b"]
    assert body["user_metadata"] == {"u": "1"}


def fail_with(status: int, headers: dict[str, str] | None = None, **body: Any) -> Callable[..., httpx.Response]:
    return lambda r: httpx.Response(status, json=body or {"detail": "nope"}, headers=headers)


def test_layer_a_retries_5xx_then_raises(server: FakeServer, make_client: MakeClient, clock: FakeClock) -> None:
    server.route("POST", "/api/v1/create_session")(fail_with(503))
    with pytest.raises(tinker.InternalServerError) as info:
        make_client()
    attempts = server.calls("/api/v1/create_session")
    assert len(attempts) == 11
    assert [r.headers["x-stainless-retry-count"] for r in attempts] == [str(i) for i in range(11)]
    assert len({r.headers["x-idempotency-key"] for r in attempts}) == 1
    assert len(clock.sleeps) == 10
    for n, delay in enumerate(clock.sleeps):
        base = min(0.5 * 2**n, 10)
        assert 0.75 * base <= delay <= base
    assert info.value.status_code == 503
    assert str(info.value) == "Error code: 503 - {'detail': 'nope'}"
    assert info.value.body == {"detail": "nope"}


def test_retry_after_is_honoured(server: FakeServer, make_client: MakeClient, clock: FakeClock) -> None:
    answers = [
        httpx.Response(429, headers={"retry-after": "2"}, json={}),
        httpx.Response(429, headers={"retry-after-ms": "1500"}, json={}),
        httpx.Response(409, headers={"retry-after": "600"}, json={}),  # out of range: normal backoff
        httpx.Response(200, json={"session_id": "s"}),
    ]
    server.route("POST", "/api/v1/create_session")(lambda r: answers.pop(0))
    make_client()
    assert clock.sleeps[:2] == [2.0, 1.5]
    assert 1.5 <= clock.sleeps[2] <= 2.0  # min(0.5 * 2**2, 10) with jitter


def test_x_should_retry_overrides(server: FakeServer, make_client: MakeClient) -> None:
    server.route("POST", "/api/v1/create_session")(fail_with(500, {"x-should-retry": "false"}))
    with pytest.raises(tinker.InternalServerError):
        make_client()
    assert len(server.calls("/api/v1/create_session")) == 1

    answers = [
        httpx.Response(400, headers={"x-should-retry": "true"}, json={}),
        httpx.Response(200, json={"session_id": "s"}),
    ]
    server.route("POST", "/api/v1/create_session")(lambda r: answers.pop(0))
    make_client()
    assert len(server.calls("/api/v1/create_session")) == 3


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, tinker.BadRequestError),
        (401, tinker.AuthenticationError),
        (403, tinker.PermissionDeniedError),
        (404, tinker.NotFoundError),
        (410, tinker.APIStatusError),
        (422, tinker.UnprocessableEntityError),
    ],
)
def test_non_retryable_status_raises_at_once(
    server: FakeServer, make_client: MakeClient, status: int, cls: type[Exception]
) -> None:
    server.route("POST", "/api/v1/create_session")(fail_with(status))
    with pytest.raises(cls) as info:
        make_client()
    assert type(info.value) is cls
    assert len(server.requests) == 1


def test_non_json_error_body_is_the_message(server: FakeServer, make_client: MakeClient) -> None:
    server.route("POST", "/api/v1/create_session")(lambda r: httpx.Response(400, text="plain failure"))
    with pytest.raises(tinker.BadRequestError, match=r"^plain failure$") as info:
        make_client()
    assert info.value.body == "plain failure"


def test_transport_errors(server: FakeServer, make_client: MakeClient) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    server.route("POST", "/api/v1/create_session")(refuse)
    with pytest.raises(tinker.APIConnectionError, match=r"^Connection error\.$") as info:
        make_client()
    assert type(info.value) is tinker.APIConnectionError
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(server.requests) == 11

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    server.route("POST", "/api/v1/create_session")(slow)
    with pytest.raises(tinker.APITimeoutError, match=r"^Request timed out\.$"):
        make_client(max_retries=0)


def test_response_validation(server: FakeServer, make_client: MakeClient) -> None:
    server.route("POST", "/api/v1/create_session")(lambda r: httpx.Response(200, json={"no": "session"}))
    with pytest.raises(tinker.APIResponseValidationError):
        make_client()
    server.route("POST", "/api/v1/create_session")(lambda r: httpx.Response(200, text="<html>"))
    with pytest.raises(tinker.APIResponseValidationError):
        make_client()


def test_layer_b_backoff_and_deadline(server: FakeServer, make_client: MakeClient, clock: FakeClock) -> None:
    client = make_client(max_retries=0)
    server.route("GET", "/api/v1/get_server_capabilities")(fail_with(500))
    with pytest.raises(tinker.InternalServerError):
        client.get_server_capabilities()
    assert clock.sleeps == [1, 2, 4, 8, 16] + [30] * 9
    assert len(server.calls("/api/v1/get_server_capabilities")) == 15
    keys = {r.headers.get("x-idempotency-key") for r in server.calls("/api/v1/get_server_capabilities")}
    assert keys == {None}


def test_layer_b_does_not_retry_client_errors(server: FakeServer, make_client: MakeClient) -> None:
    client = make_client()
    server.route("GET", "/api/v1/get_server_capabilities")(fail_with(400))
    with pytest.raises(tinker.BadRequestError):
        client.get_server_capabilities()
    assert len(server.calls("/api/v1/get_server_capabilities")) == 1


def test_base_url_default_constant() -> None:
    assert BASE_URL.startswith("http://")


def test_per_call_overrides_distinguish_not_given_from_none() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    async def main() -> None:
        http = HTTPClient(
            api_key="k", base_url=BASE_URL, http_client=httpx.AsyncClient(transport=httpx.MockTransport(handle))
        )
        await http.request("GET", "api/v1/healthz")  # not given: the client default (60 s)
        await http.request("GET", "api/v1/healthz", options={"timeout": 7.5})
        await http.request("GET", "api/v1/healthz", options={"timeout": None})  # None: no timeout at all
        await http.request("GET", "api/v1/healthz", options={"headers": {"Accept": tinker.Omit(), "X-A": "1"}})

    asyncio.run(main())
    assert [r.headers.get("x-stainless-read-timeout") for r in seen] == ["60", "7.5", None, "60"]
    assert seen[1].extensions["timeout"]["read"] == 7.5
    assert seen[2].extensions["timeout"] == {"connect": None, "read": None, "write": None, "pool": None}
    assert seen[3].headers["accept"] == "*/*"  # ours omitted; httpx fills in its default
    assert seen[3].headers["x-a"] == "1"
    http = HTTPClient(api_key="k", timeout=None)
    assert http.timeout is None
    assert HTTPClient(api_key="k", timeout=tinker.NOT_GIVEN).timeout == tinker.DEFAULT_TIMEOUT

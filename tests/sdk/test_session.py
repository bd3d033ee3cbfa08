"""ServiceClient session: messages, heartbeat, telemetry, sync_only warnings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
import pytest

import tinker

from .conftest import FakeClock, FakeServer, json_of

MakeClient = Callable[..., tinker.ServiceClient]


def wait_for(predicate: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_session_messages_are_logged(
    server: FakeServer, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.route("POST", "/api/v1/create_session")(
        lambda r: httpx.Response(
            200, json={"session_id": "s", "info_message": "hi", "warning_message": "careful", "error_message": "bad"}
        )
    )
    with caplog.at_level(logging.INFO, logger="tinker"):
        client = make_client()
    levels = {(r.levelno, r.getMessage()) for r in caplog.records}
    assert {(logging.INFO, "hi"), (logging.WARNING, "careful"), (logging.ERROR, "bad")} <= levels
    assert client.holder.session_id == "s"


def test_heartbeat(server: FakeServer, make_client: MakeClient, clock: FakeClock) -> None:
    fail = [True]

    def beat(request: httpx.Request) -> httpx.Response:
        if fail[0]:
            fail[0] = False
            return httpx.Response(500, json={})
        return httpx.Response(200, json={"type": "session_heartbeat"})

    server.route("POST", "/api/v1/session_heartbeat")(beat)
    client = make_client(_timings=clock.timings(heartbeat_interval=0.01))
    wait_for(lambda: len(server.calls("/api/v1/session_heartbeat")) >= 3)
    beats = server.calls("/api/v1/session_heartbeat")
    assert json_of(beats[0]) == {"session_id": "sess-1"}
    assert beats[0].headers["x-stainless-read-timeout"] == "10"
    assert {b.headers["x-stainless-retry-count"] for b in beats} == {"0"}
    client.holder.close()


def test_telemetry_session_start(server: FakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "1")
    client = make_client()
    wait_for(lambda: bool(server.calls("/api/v1/telemetry")))
    batch = json_of(server.calls("/api/v1/telemetry")[0])
    assert batch["session_id"] == "sess-1" and batch["sdk_version"] == "0.5.1"
    assert batch["events"][0]["event"] == "SESSION_START"
    assert batch["events"][0]["event_session_index"] == 0
    assert client.get_telemetry() is not None


def test_failed_telemetry_never_delays_errors(
    server: FakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "1")
    server.route("POST", "/api/v1/telemetry")(lambda r: httpx.Response(500, json={}))
    client = make_client()
    server.route("POST", "/api/v1/create_model")(lambda r: server.future({"model_id": "m"}))
    server.route("POST", "/api/v1/optim_step")(lambda r: server.future({"error": "boom", "category": "server"}))
    tc = client.create_lora_training_client("b")
    start = time.monotonic()
    with pytest.raises(tinker.RequestFailedError):
        tc.optim_step(tinker.AdamParams()).result(timeout=5)
    assert time.monotonic() - start < 1


def test_telemetry_off(server: FakeServer, client: tinker.ServiceClient) -> None:
    assert client.get_telemetry() is None
    assert server.calls("/api/v1/telemetry") == []


def test_sync_only_warns_inside_event_loop(
    server: FakeServer, client: tinker.ServiceClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.route("GET", "/api/v1/get_server_capabilities")(lambda r: httpx.Response(200, json={"supported_models": []}))
    client.get_server_capabilities()
    assert "get_server_capabilities_async" not in caplog.text

    async def main() -> tinker.types.GetServerCapabilitiesResponse:
        return client.get_server_capabilities()

    caps = asyncio.run(main())
    assert caps.supported_models == []
    assert "get_server_capabilities_async" in caplog.text
    assert asyncio.run(client.get_server_capabilities_async()).supported_models == []

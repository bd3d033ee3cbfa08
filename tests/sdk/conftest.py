"""Fixtures for SDK tests: a fake Tinker server behind ``httpx.MockTransport``.

Tests talk to the real SDK; the only seam is the ``http_client`` a
ServiceClient accepts, plus ``_timings`` (a fake clock whose sleeps return at
once and are recorded).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

import tinker
from tinker._timings import Timings

Handler = Callable[[httpx.Request], "httpx.Response | Awaitable[httpx.Response]"]

BASE_URL = "http://tinker.test"


def json_of(request: httpx.Request) -> Any:
    return json.loads(request.content) if request.content else None


class FakeClock:
    """A clock that only moves when the SDK sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def clock(self) -> float:
        return self.now

    def timings(self, **overrides: Any) -> Timings:
        settings: dict[str, Any] = {"sleep": self.sleep, "clock": self.clock, "heartbeat_interval": 3600.0}
        return Timings(**{**settings, **overrides})


class FakeServer:
    """Routes by (method, path); futures resolve through a per-request queue of poll answers."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], Handler] = {}
        self.polls: dict[str, list[Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.route("POST", "/api/v1/create_session")(
            lambda r: httpx.Response(200, json={"type": "create_session", "session_id": "sess-1"})
        )
        self.route("POST", "/api/v1/session_heartbeat")(
            lambda r: httpx.Response(200, json={"type": "session_heartbeat"})
        )
        self.route("POST", "/api/v1/telemetry")(lambda r: httpx.Response(200, json={"status": "accepted"}))
        self.route("POST", "/api/v1/retrieve_future")(self._retrieve)

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes[(method, path)] = handler
            return handler

        return register

    def future(self, *answers: Any) -> httpx.Response:
        """A submit response whose polls return ``answers`` in turn (the last one repeats).

        An answer is a dict (200 JSON), an ``httpx.Response``, or an exception to raise.
        """
        request_id = f"req-{next(self._ids)}"
        with self._lock:
            self.polls[request_id] = list(answers)
        return httpx.Response(200, json={"request_id": request_id, "model_id": None})

    async def _retrieve(self, request: httpx.Request) -> httpx.Response:
        request_id = json_of(request)["request_id"]
        with self._lock:
            queue = self.polls.get(request_id)
            if queue is None:
                return httpx.Response(404, json={"detail": f"unknown request {request_id}"})
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            answer = answer()
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # a real network exchange always yields to the event loop
        await request.aread()
        self.requests.append(request)
        path = request.url.path
        path = path[path.find("/api/") :] if "/api/" in path else path
        handler = self.routes.get((request.method, path))
        if handler is None:
            return httpx.Response(404, json={"detail": f"no route {request.method} {path}"})
        response = handler(request)
        if not isinstance(response, httpx.Response):
            response = await response
        return response

    def calls(self, path: str, method: str | None = None) -> list[httpx.Request]:
        return [r for r in list(self.requests) if r.url.path.endswith(path) and (method is None or r.method == method)]

    def bodies(self, path: str) -> list[Any]:
        return [json_of(r) for r in self.calls(path)]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    for name in (
        "TINKER_API_KEY",
        "TINKER_BASE_URL",
        "TINKER_TAGS",
        "CLOUDFLARE_ACCESS_CLIENT_ID",
        "CLOUDFLARE_ACCESS_CLIENT_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("TINKER_CACHE_DIR", str(tmp_path / "cache"))
    yield


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(server: FakeServer, clock: FakeClock) -> Callable[..., tinker.ServiceClient]:
    def make(**kwargs: Any) -> tinker.ServiceClient:
        kwargs.setdefault("api_key", "test-key")
        kwargs.setdefault("base_url", BASE_URL)
        kwargs.setdefault("_timings", clock.timings())
        kwargs.setdefault("http_client", httpx.AsyncClient(transport=httpx.MockTransport(server.handle)))
        return tinker.ServiceClient(**kwargs)

    return make


@pytest.fixture
def client(make_client: Callable[..., tinker.ServiceClient]) -> tinker.ServiceClient:
    return make_client()


def fb_output(n: int = 1, **metrics: float) -> dict[str, Any]:
    """A forward/backward result for ``n`` datums."""
    return {
        "loss_fn_output_type": "target_logprobs",
        "loss_fn_outputs": [{"logprobs": {"data": [-1.0, -2.0], "dtype": "float32", "shape": [2]}}] * n,
        "metrics": metrics or {"loss:sum": 1.0},
    }


@pytest.fixture
def training_client(server: FakeServer, client: tinker.ServiceClient) -> tinker.TrainingClient:
    server.route("POST", "/api/v1/create_model")(
        lambda r: server.future({"model_id": f"sess-1:train:{json_of(r)['model_seq_id']}", "type": "create_model"})
    )
    return client.create_lora_training_client("base/model", rank=8)

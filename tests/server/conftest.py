"""Fixtures: the real app in-process (TestClient), a real SQLite database in tmp_path.

``fake_server`` uses :class:`FakeEngine` (fast, scriptable); ``tiny_server`` the
real engine with the tiny test model.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette

from tinker_server.app import create_app
from tinker_server.runtime import Runtime
from tinker_server.settings import Settings

from .fake_engine import FakeEngine

FAKE_MODEL = "fake/model-a"
FAKE_MODEL_B = "fake/model-b"
KEY = "test-key-1"
OTHER_KEY = "test-key-2"


class Api:
    """A TestClient bound to one API key, with helpers for the future protocol."""

    def __init__(self, client: TestClient, key: str | None = KEY) -> None:
        self.client = client
        self.headers = {"X-API-Key": key} if key is not None else {}

    def close(self) -> None:
        """Stop the server (runs the app's shutdown)."""
        if not getattr(self.client, "_closed_by_test", False):
            self.client.__exit__(None, None, None)
            self.client._closed_by_test = True  # type: ignore[attr-defined]

    @property
    def runtime(self) -> Runtime:
        """The server's runtime (``app.state.runtime``)."""
        app = self.client.app
        assert isinstance(app, Starlette)
        return app.state.runtime

    def as_key(self, key: str | None) -> Api:
        return Api(self.client, key)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        headers = {**self.headers, **kw.pop("headers", {})}
        if body is None:
            return self.client.post(f"/api/v1/{path}", headers=headers, **kw)
        return self.client.post(f"/api/v1/{path}", json=body, headers=headers, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(f"/api/v1/{path}", headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete(f"/api/v1/{path}", headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def ok(self, path: str, body: Any = None) -> Any:
        response = self.post(path, body)
        assert response.status_code == 200, response.text
        return response.json()

    def poll(self, request_id: str, timeout: float = 30.0) -> Any:
        """The future's outcome (result or error object), polling through 408s."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.post("retrieve_future", {"request_id": request_id})
            if response.status_code == 200:
                return response.json()
            assert response.status_code == 408, response.text
            body = response.json()
            assert body == {
                "type": "try_again",
                "request_id": request_id,
                "queue_state": "active",
                "queue_state_reason": "the request is queued or running; poll again",
            }
            assert time.monotonic() < deadline, "future did not finish in time"

    def result(self, path: str, body: Any, timeout: float = 30.0) -> Any:
        """Submit a future and return its successful result."""
        fut = self.ok(path, body)
        out = self.poll(fut["request_id"], timeout)
        assert "error" not in out, out
        return out

    def session(self) -> str:
        return self.ok("create_session", {"tags": [], "user_metadata": None, "sdk_version": "0.5.1"})["session_id"]

    def create_model(self, session_id: str, seq: int = 0, base_model: str = FAKE_MODEL, rank: int = 8) -> str:
        body = {
            "session_id": session_id,
            "model_seq_id": seq,
            "base_model": base_model,
            "user_metadata": None,
            "lora_config": {"rank": rank, "seed": None, "train_unembed": True, "train_mlp": True, "train_attn": True},
        }
        return self.result("create_model", body)["model_id"]


def datum(
    tokens: list[int], targets: list[int] | None = None, weights: Sequence[float] | None = None
) -> dict[str, Any]:
    targets = targets if targets is not None else [*tokens[1:], tokens[0]]
    weights = weights if weights is not None else [1] * len(tokens)
    return {
        "loss_fn_inputs": {
            "target_tokens": {"data": targets, "dtype": "int64", "shape": [len(targets)]},
            "weights": {"data": weights, "dtype": "float32", "shape": [len(weights)]},
        },
        "model_input": {"chunks": [{"tokens": tokens}]},
    }


def fb_body(
    model_id: str, seq_id: int, data: list[dict[str, Any]] | None = None, loss_fn: str = "cross_entropy"
) -> dict[str, Any]:
    return {
        "forward_backward_input": {"data": data or [datum([1, 2, 3])], "loss_fn": loss_fn, "loss_fn_config": None},
        "model_id": model_id,
        "seq_id": seq_id,
    }


@pytest.fixture
def fake_engines(tmp_path: pathlib.Path) -> dict[str, FakeEngine]:
    return {}


@pytest.fixture
def make_fake_server(tmp_path: pathlib.Path, fake_engines: dict[str, FakeEngine]) -> Iterator[Callable[..., Api]]:
    servers: list[Api] = []

    def loader(name: str) -> FakeEngine:
        engine = fake_engines.get(name)
        if engine is None:
            engine = fake_engines[name] = FakeEngine(name, tmp_path)
        return engine

    def make(**overrides: Any) -> Api:
        # The engines exist before they load (on first use), so tests can hold their gate.
        for name in (FAKE_MODEL, FAKE_MODEL_B):
            if name not in fake_engines:
                fake_engines[name] = FakeEngine(name, tmp_path)
        settings = Settings(
            home=tmp_path / "home",
            models=[FAKE_MODEL, FAKE_MODEL_B],
            long_poll_s=0.3,
            **overrides,
        )
        client = TestClient(create_app(settings, engine_loader=loader))
        client.__enter__()
        servers.append(Api(client))
        return servers[-1]

    yield make
    for server in reversed(servers):
        server.close()


@pytest.fixture
def api(make_fake_server: Callable[..., Api]) -> Api:
    return make_fake_server()

"""Fixtures for CLI tests: the real server app on a loopback port, and a CLI runner.

The server runs with uvicorn in a background thread (the archive download is a
separate HTTP GET, so the SDK needs a real URL).  Every test talks to it with
its own API key: the server maps each key to its own tenant, so every test
starts with no runs, checkpoints or sessions of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from tinker.cli._app import app

TINY_MODEL = "tinker-test/tiny-llama"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def running_server(home: Path) -> Iterator[str]:
    """The real app (``create_app(Settings(...))``) under uvicorn in a thread."""
    uvicorn = pytest.importorskip("uvicorn")
    app_module = pytest.importorskip("tinker_server.app")
    settings_module = pytest.importorskip("tinker_server.settings")

    port = free_port()
    settings = settings_module.Settings(
        home=home, host="127.0.0.1", port=port, models=[TINY_MODEL], log_level="warning"
    )
    app = app_module.create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tinker-test-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("cli-server-home")) as url:
        yield url


_keys = itertools.count(1)


@dataclass
class Tenant:
    """One API key on the test server, with helpers to make runs and checkpoints."""

    url: str
    api_key: str
    runs: list[Any] = field(default_factory=list)  # TrainingClients

    def service(self) -> Any:
        import tinker

        return tinker.ServiceClient(api_key=self.api_key, base_url=self.url)

    def make_run(self, states: tuple[str, ...] = ("s1",), samplers: tuple[str, ...] = ("w1",)) -> tuple[str, list[str]]:
        """A training run with the named checkpoints; returns (run id, tinker paths)."""
        trainer = self.service().create_lora_training_client(base_model=TINY_MODEL, rank=4)
        self.runs.append(trainer)
        paths = [trainer.save_state(name).result().path for name in states]
        paths += [trainer.save_weights_for_sampler(name).result().path for name in samplers]
        return trainer.model_id, paths

    def env(self) -> dict[str, str]:
        return {"TINKER_BASE_URL": self.url, "TINKER_API_KEY": self.api_key}

    def rest(self) -> Any:
        return self.service().create_rest_client()


@pytest.fixture
def tenant(server_url: str, request: pytest.FixtureRequest) -> Tenant:
    return Tenant(server_url, f"cli-test-{next(_keys)}-{request.node.name}")


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``invoke(*args, env=..., input=...)`` runs the CLI in-process (stdout and
    stderr kept apart), with TINKER_* variables from the outer environment removed."""
    for name in ("TINKER_BASE_URL", "TINKER_API_KEY", "TINKER_DEBUG"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(app, list(args), env=env, input=input, catch_exceptions=False)

    return run


def http_get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=30)

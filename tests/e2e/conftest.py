"""End-to-end fixtures: OUR SDK (``import tinker``) against the REAL server app.

The app (``create_app(Settings(...))``) runs under uvicorn on a free loopback
port in a background thread, with the real engine and the tiny test model. Each
test talks to it with its own API key, so each test is its own tenant and sees
only its own runs, checkpoints and sessions.

Every ServiceClient a test opens goes through :func:`connect`, which stops its
heartbeat and telemetry and closes its HTTP pool when the test ends (the SDK
has no public ``close()``; ``holder.close()`` is what the garbage collector
would run).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("torch")

import tinker  # noqa: E402
from tinker._timings import Timings  # noqa: E402
from tinker_server.app import create_app  # noqa: E402
from tinker_server.engine import TINY_MODEL  # noqa: E402
from tinker_server.settings import Settings  # noqa: E402

__all__ = ["TINY_MODEL", "Server", "adam", "datum", "expect_error", "serve", "token_batch"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    home: Path
    settings: Settings
    app: Any = None  # the FastAPI app (its runtime: app.state.runtime)


@contextlib.contextmanager
def serve(home: Path, **overrides: Any) -> Iterator[Server]:
    """The real app under uvicorn in a daemon thread, until the block exits."""
    port = free_port()
    # One torch thread in the engine's worker: the tiny model gains nothing from more.
    options: dict[str, Any] = {"models": [TINY_MODEL], "long_poll_s": 1.0, "log_level": "warning", "torch_threads": 1}
    options.update(overrides)
    settings = Settings(home=home, host="127.0.0.1", port=port, **options)
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"tinker-e2e-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the e2e test server did not start")
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", home, settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the e2e test server did not stop"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from intra-op threads, and OpenMP spin-waits make
    it many times slower when the 2 cores are shared with other work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("e2e-home")) as srv:
        yield srv


_keys = itertools.count(1)


@pytest.fixture
def connect(server: Server, request: pytest.FixtureRequest) -> Iterator[Callable[..., tinker.ServiceClient]]:
    """``connect(key=None, url=None, **kwargs)`` → a ServiceClient, closed after the test.

    Without ``key`` every call of one test shares that test's own key (tenant).
    """
    default_key = f"e2e-{next(_keys)}-{request.node.name}"
    clients: list[tinker.ServiceClient] = []

    def make(key: str | None = None, url: str | None = None, **kwargs: Any) -> tinker.ServiceClient:
        client = tinker.ServiceClient(base_url=url or server.url, api_key=key or default_key, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.holder.close()
    clients.clear()
    gc.collect()


@pytest.fixture
def sc(connect: Callable[..., tinker.ServiceClient]) -> tinker.ServiceClient:
    return connect()


@pytest.fixture
def quiet_heartbeat() -> Timings:
    """Timings of a client that never sends a heartbeat during a test."""
    return Timings(heartbeat_interval=3600.0, telemetry_flush_interval=3600.0)


# -- data helpers --------------------------------------------------------------------------


def datum(tokens: list[int], weights: list[float] | None = None) -> tinker.Datum:
    """Next-token prediction over ``tokens`` (input tokens[:-1], targets tokens[1:])."""
    inputs, targets = tokens[:-1], tokens[1:]
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(inputs),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=targets, dtype="int64", shape=[len(targets)]),
            "weights": tinker.TensorData(
                data=weights if weights is not None else [1.0] * len(targets), dtype="float32"
            ),
        },
    )


def token_batch(vocab: int = 512) -> list[tinker.Datum]:
    """A fixed small batch of token sequences (no tokenizer needed)."""
    return [
        datum([(7 * i + 3) % vocab for i in range(12)]),
        datum([(11 * i + 40) % vocab for i in range(9)]),
    ]


def adam(lr: float = 0.02) -> tinker.AdamParams:
    return tinker.AdamParams(learning_rate=lr)


def expect_error(
    exc_type: type[BaseException] | tuple[type[BaseException], ...],
    fn: Callable[[], Any],
    *needles: str,
    within: float = 10.0,
) -> BaseException:
    """``fn()`` raises ``exc_type`` within ``within`` seconds, with every needle in its message."""
    start = time.monotonic()
    with pytest.raises(exc_type) as info:
        fn()
    elapsed = time.monotonic() - start
    assert elapsed < within, f"{exc_type} took {elapsed:.1f} s"
    text = str(info.value)
    cause = info.value.__cause__
    if cause is not None:
        text += " | " + str(cause)
    for needle in needles:
        assert needle.lower() in text.lower(), f"{needle!r} not in {text!r}"
    return info.value

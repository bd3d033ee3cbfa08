"""Run `tinker serve` as a child process: for demos, benchmarks and tests.

with background_server(home, ["HuggingFaceTB/SmolLM2-135M-Instruct"]) as url:
    client = tinker.ServiceClient(base_url=url, api_key="local")
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

__all__ = ["background_server", "free_port"]


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def background_server(
    home: Path,
    models: list[str],
    *,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
    python: str | None = None,
) -> Iterator[str]:
    """Start ``python -m tinker_server`` on a free loopback port; yield its base URL once
    ``/api/v1/healthz`` answers; stop it when the block exits. ``python``: the interpreter
    of another environment that has the server installed (default: this one).

    The server's output goes to ``home/server.log``; a server that exits early or is not
    ready within ``timeout`` seconds raises ``RuntimeError`` quoting the end of that log.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / "server.log"
    args = [python or sys.executable, "-m", "tinker_server", "--port", str(port), "--home", str(home)]
    for model in models:
        args += ["--model", model]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode}:\n{_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/v1/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

"""The engine in a worker process: :class:`ProcessEngine`, the API process's handle.

``start()`` launches ``python -m tinker_server.engine.worker`` with one end of a Unix
socket pair, sends it a :class:`WorkerSpec`, and waits until it has loaded the model
(it answers with the :class:`ModelInfo`). ``run()`` sends a round of commands and
reads until the round's :class:`~.api.Report` comes back; meanwhile the worker may
send token events of streaming sampling jobs, which are handed to the jobs'
``on_token`` sinks here. Messages are pickled (numpy arrays travel as raw bytes).

If the worker dies (killed, out of memory, a crash), ``run()`` raises
:class:`~.api.WorkerLost` within :data:`POLL_S` seconds; the next ``start()`` launches
a fresh worker, with no adapters. The transport is this module only: another one
(e.g. remote workers) is another :class:`~.api.EngineHandle`.

Imports no torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .api import Command, Report, Sample, WorkerLost
from .errors import EngineError, ModelLoadError
from .messages import ModelInfo
from .residency import ResidencyLimits

__all__ = ["POLL_S", "ProcessEngine", "WorkerSpec"]

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a waiting handle checks that its worker is alive
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process loads, and how (the server settings that concern the engine)."""

    model_name: str
    home: str
    device: str = "cpu"
    dtype: str = "float32"
    max_tokens_per_microbatch: int = 2048
    packed_weights: bool = True
    torch_threads: int | None = None
    residency: ResidencyLimits = field(default_factory=ResidencyLimits)


class ProcessEngine:
    """An :class:`~.api.EngineHandle` whose engine lives in a worker process."""

    def __init__(self, spec: WorkerSpec, *, start_timeout_s: float = 3600.0) -> None:
        self.spec = spec
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._info: ModelInfo | None = None
        self._resident = 0
        self.starts = 0  # worker processes launched so far

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ModelInfo:
        if self._alive() and self._info is not None:
            return self._info
        self._discard()
        parent, child = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tinker_server.engine.worker", str(child.fileno())],
                pass_fds=(child.fileno(),),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            child.close()
        self.starts += 1
        self._conn = Connection(parent.detach())
        log.info("engine worker for %s started (pid %d)", self.spec.model_name, self._proc.pid)
        self._conn.send(("init", self.spec))
        kind, payload = self._receive(self._start_timeout_s, "loading the model")
        if kind == "failed":
            self._discard()
            raise payload if isinstance(payload, EngineError) else ModelLoadError(str(payload))
        if kind != "ready":
            self._discard()
            raise ModelLoadError(f"the engine worker of {self.spec.model_name} answered {kind!r} instead of 'ready'")
        self._info = payload
        self._resident = 0
        return payload

    def run(self, commands: Sequence[Command]) -> Report:
        self.start()
        assert self._conn is not None
        sinks: dict[int, Any] = {}
        wire: list[Command] = []
        for i, command in enumerate(commands):
            if isinstance(command, Sample) and command.job.on_token is not None:
                sinks[i] = command.job.on_token
                command = dataclasses.replace(command, job=dataclasses.replace(command.job, on_token=None))
            wire.append(command)
        try:
            self._conn.send(("run", wire, sorted(sinks)))
        except OSError:
            raise self._lost("sending it work") from None
        while True:
            kind, payload = self._receive(None, "running a request")
            if kind == "token":
                index, event = payload
                sink = sinks.get(index)
                if sink is not None:
                    try:
                        sink(event)
                    except Exception:  # a broken sink is not called again
                        log.exception("token sink failed; it gets no more tokens")
                        sinks.pop(index, None)
                continue
            if kind == "done":
                report, self._resident = payload
                return report
            if kind == "crash":
                raise EngineError(f"the engine worker of {self.spec.model_name} failed: {payload}")
            raise EngineError(f"the engine worker of {self.spec.model_name} sent an unexpected {kind!r} message")

    def resident(self) -> int:
        return self._resident

    def _receive(self, timeout: float | None, doing: str) -> tuple[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        assert self._conn is not None
        while True:
            try:
                if self._conn.poll(POLL_S):
                    message: tuple[str, Any] = self._conn.recv()
                    return message
            except (EOFError, OSError):
                raise self._lost(doing) from None
            if not self._alive():
                raise self._lost(doing)
            if deadline is not None and time.monotonic() > deadline:
                self._discard()
                raise ModelLoadError(f"the engine worker of {self.spec.model_name} took over {timeout:g} s {doing}")

    def _lost(self, doing: str) -> WorkerLost:
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                code = None
        self._discard()
        how = (
            f"exit code {code}"
            if code is not None and code >= 0
            else (f"killed by signal {-code}" if code is not None else "stopped answering")
        )
        return WorkerLost(
            f"the engine worker of {self.spec.model_name} stopped ({how}) while {doing}; the adapters it held "
            "are gone and a new worker starts with the next request"
        )

    def _discard(self) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        self._info = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        conn, proc = self._conn, self._proc
        if conn is not None and proc is not None and proc.poll() is None:
            try:
                conn.send(("stop", None))
                proc.wait(timeout=STOP_GRACE_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._discard()

"""Running commands on an engine: :class:`EngineHost` (the engine's side of the
interface, with the residency policy) and :class:`LocalEngine` (a handle that runs a
host in this process; the worker process runs the same host, see :mod:`.worker`).

Imports no torch itself: the engine it drives is built by a loader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .api import (
    Command,
    CopyAdapter,
    CreateAdapter,
    DropAdapter,
    EngineCore,
    Evicted,
    ForwardBackward,
    GradientCheckpoint,
    LoadAdapter,
    OptimStep,
    Outcome,
    Report,
    Sample,
    SaveAdapter,
)
from .errors import COMPUTE_ERRORS, AdapterNotFound, EngineError
from .messages import ModelInfo
from .residency import Residency, ResidencyLimits

__all__ = ["EngineHost", "LocalEngine"]

log = logging.getLogger(__name__)


def _as_error(exc: BaseException, what: str) -> EngineError:
    return exc if isinstance(exc, EngineError) else EngineError(f"{what} failed: {type(exc).__name__}: {exc}")


class EngineHost:
    """Executes rounds of commands on ``core``; the one place adapter residency is decided."""

    def __init__(self, core: EngineCore, limits: ResidencyLimits | None = None) -> None:
        self.core = core
        self.residency = Residency(limits or ResidencyLimits())

    @property
    def info(self) -> ModelInfo:
        return self.core.info

    def resident(self) -> int:
        return len(self.core.adapter_ids())

    def run(self, commands: Sequence[Command]) -> Report:
        """Run the commands in order; consecutive forward/forward_backward commands go
        through the model together, and so do consecutive sampling commands."""
        report = Report(outcomes=[None] * len(commands))
        i = 0
        while i < len(commands):
            kind = type(commands[i])
            j = i + 1
            if kind in (ForwardBackward, Sample):
                while j < len(commands) and type(commands[j]) is kind:
                    j += 1
            group = list(commands[i:j])
            if kind is ForwardBackward:
                outcomes = self._forward_backward(group)  # type: ignore[arg-type]
            elif kind is Sample:
                outcomes = self._sample(group, report)  # type: ignore[arg-type]
            else:
                outcomes = [self._one(group[0], report)]
            report.outcomes[i:j] = outcomes
            i = j
        return report

    # -- single commands ---------------------------------------------------------------

    def _one(self, command: Command, report: Report) -> Outcome:
        core = self.core
        try:
            if isinstance(command, CreateAdapter):
                core.create_adapter(command.adapter_id, command.spec)
                self._added(command.adapter_id, "train", None, report)
                return None
            if isinstance(command, CopyAdapter):
                if command.dst_id != command.src_id and core.has_adapter(command.dst_id):
                    core.drop_adapter(command.dst_id)
                core.copy_adapter(command.src_id, command.dst_id)
                self._added(command.dst_id, "sampler", command.src_id, report)
                return None
            if isinstance(command, DropAdapter):
                if core.has_adapter(command.adapter_id):
                    core.drop_adapter(command.adapter_id)
                elif not command.missing_ok:
                    raise AdapterNotFound(command.adapter_id)
                self.residency.dropped(command.adapter_id)
                return None
            if isinstance(command, LoadAdapter):
                spec = core.load_adapter(command.adapter_id, command.directory, optimizer=command.optimizer)
                self._added(command.adapter_id, command.role, None, report)
                return spec
            if isinstance(command, SaveAdapter):
                return int(core.save_adapter(command.adapter_id, command.directory, optimizer=command.optimizer))
            if isinstance(command, OptimStep):
                return core.optim_step(command.adapter_id, command.params)
            if isinstance(command, GradientCheckpoint):
                core.gradient_checkpoint(command.adapter_id, command.action)
                return None
            raise EngineError(f"unknown engine command {type(command).__name__}")
        except (EngineError, *COMPUTE_ERRORS) as exc:
            return _as_error(exc, type(command).__name__)

    def _added(
        self, adapter_id: str, role: str, source: str | None, report: Report, protect: Sequence[str] = ()
    ) -> None:
        nbytes_of: Callable[[str], int] | None = getattr(self.core, "adapter_nbytes", None)
        nbytes = nbytes_of(adapter_id) if nbytes_of is not None and role == "sampler" else 0
        self.residency.added(adapter_id, role, source=source, nbytes=nbytes)
        for victim, reason in self.residency.victims(protect={adapter_id, *protect}):
            if self.core.has_adapter(victim):
                self.core.drop_adapter(victim)
            report.events.append(Evicted(victim, reason))
            log.info("evicted sampler adapter %s: %s", victim, reason)

    # -- batched commands --------------------------------------------------------------

    def _forward_backward(self, commands: list[ForwardBackward]) -> list[Outcome]:
        items = [(c.adapter_id, c.data, c.loss_fn, c.loss_fn_config, c.backward) for c in commands]
        try:
            return list(self.core.forward_backward_many(items))
        except (EngineError, *COMPUTE_ERRORS) as exc:
            error = _as_error(exc, "forward_backward")
            return [error for _ in commands]

    def _sample(self, commands: list[Sample], report: Report) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(commands)
        used = {c.job.adapter_id for c in commands if c.job.adapter_id is not None}
        ready: list[int] = []
        for i, command in enumerate(commands):
            adapter_id = command.job.adapter_id
            if adapter_id is not None and not self.core.has_adapter(adapter_id) and command.reload_from is not None:
                try:
                    self.core.load_adapter(adapter_id, command.reload_from, optimizer=False)
                except (EngineError, *COMPUTE_ERRORS) as exc:
                    outcomes[i] = _as_error(exc, f"loading the adapter of sampler {adapter_id}")
                    continue
                self._added(adapter_id, "sampler", None, report, protect=sorted(used))
            if adapter_id is not None:
                self.residency.used(adapter_id)
            ready.append(i)
        if ready:
            try:
                results: list[Any] = list(self.core.sample([commands[i].job for i in ready]))
            except (EngineError, *COMPUTE_ERRORS) as exc:
                results = [_as_error(exc, "sampling")] * len(ready)
            for i, result in zip(ready, results, strict=True):
                outcomes[i] = result
        return outcomes


class LocalEngine:
    """An :class:`~.api.EngineHandle` running its engine in this process, built on first
    use by ``loader()`` (any :class:`~.api.EngineCore`; tests pass fakes)."""

    def __init__(self, loader: Callable[[], EngineCore], limits: ResidencyLimits | None = None) -> None:
        self._loader = loader
        self._limits = limits
        self.host: EngineHost | None = None

    def start(self) -> ModelInfo:
        if self.host is None:
            self.host = EngineHost(self._loader(), self._limits)
        return self.host.info

    def run(self, commands: Sequence[Command]) -> Report:
        self.start()
        assert self.host is not None
        return self.host.run(commands)

    def resident(self) -> int:
        return 0 if self.host is None else self.host.resident()

    def close(self) -> None:
        self.host = None

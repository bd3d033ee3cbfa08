"""The engine's interface: typed commands in, typed results out.

Everything a server asks of an engine is one of the commands below, handed to an
:class:`EngineHandle` in a list (one round of work); each command gets its own
outcome, a result or an :class:`~.errors.EngineError`, in order. A handle runs the
commands where the engine lives: in this process (:class:`~.host.LocalEngine`) or in
a worker process (:class:`~.process.ProcessEngine`); the transport is the handle's
business, the commands and results are the same. Commands are plain data (picklable,
numpy arrays for per-token values); no callable crosses the boundary, except
``SampleJob.on_token``, which a handle runs on its caller's side (a worker process
streams the token events back).

Which adapters stay in memory is the engine's decision (:mod:`.residency`): it reports
what it dropped as :class:`Evicted` events, and the server records them.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .errors import EngineError
from .messages import AdamConfig, LoraSpec, ModelInfo, SampleJob, SampleOutput, TokenEvent, TrainDatum, TrainOutput

__all__ = [
    "Command",
    "CopyAdapter",
    "CreateAdapter",
    "DropAdapter",
    "EngineCore",
    "EngineHandle",
    "Evicted",
    "ForwardBackward",
    "GradientCheckpoint",
    "LoadAdapter",
    "OptimStep",
    "Outcome",
    "Report",
    "Role",
    "Sample",
    "SaveAdapter",
    "TokenSink",
    "WorkerLost",
]

# What an adapter is for: a training run's (kept until dropped) or a sampler's (the engine
# may evict it when memory is short; see .residency).
Role = Literal["train", "sampler"]


@dataclass(frozen=True)
class CreateAdapter:
    """A fresh training adapter (``A`` seeded by ``spec.seed``, ``B = 0``). Result: ``None``."""

    adapter_id: str
    spec: LoraSpec


@dataclass(frozen=True)
class CopyAdapter:
    """A frozen sampler snapshot ``dst_id`` of ``src_id``'s current weights, replacing any
    adapter ``dst_id``. The engine keeps a bounded number of snapshots per source. Result: ``None``."""

    src_id: str
    dst_id: str


@dataclass(frozen=True)
class DropAdapter:
    """Free an adapter; ``missing_ok`` makes an unknown id a no-op. Result: ``None``."""

    adapter_id: str
    missing_ok: bool = True


@dataclass(frozen=True)
class LoadAdapter:
    """Load a checkpoint folder into ``adapter_id`` (created or replaced), with its optimizer
    state when ``optimizer``. Result: the checkpoint's :class:`LoraSpec`."""

    adapter_id: str
    directory: pathlib.Path
    optimizer: bool = False
    role: Role = "train"


@dataclass(frozen=True)
class SaveAdapter:
    """Write a PEFT-format checkpoint (plus optimizer state when ``optimizer``) to
    ``directory``, atomically. Result: bytes written (``int``)."""

    adapter_id: str
    directory: pathlib.Path
    optimizer: bool


@dataclass(frozen=True)
class ForwardBackward:
    """forward (``backward=False``) or forward_backward of one request. Consecutive ones in a
    round go through the base model together. Result: :class:`TrainOutput`."""

    adapter_id: str
    data: list[TrainDatum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None = None
    backward: bool = True


@dataclass(frozen=True)
class GradientCheckpoint:
    """Keep, restore or discard a copy of a training adapter's accumulated gradients, so
    that a request run as several :class:`ForwardBackward` parts (in successive rounds)
    is all or nothing: ``open`` copies the gradients now (replacing an open copy),
    ``restore`` puts the copy back and forgets it (no-op without one), ``close`` forgets
    it. Dropping or loading the adapter forgets it too. Result: ``None``."""

    adapter_id: str
    action: Literal["open", "restore", "close"]


@dataclass(frozen=True)
class OptimStep:
    """One AdamW step from the accumulated gradients. Result: metrics (``dict[str, float]``)."""

    adapter_id: str
    params: AdamConfig


@dataclass(frozen=True)
class Sample:
    """One sampling request. Consecutive ones in a round decode together. When the job's
    adapter is not in memory and ``reload_from`` names its checkpoint folder, the engine
    loads it first (as a sampler). Result: :class:`SampleOutput`."""

    job: SampleJob
    reload_from: pathlib.Path | None = None


Command = (
    CreateAdapter
    | CopyAdapter
    | DropAdapter
    | LoadAdapter
    | SaveAdapter
    | ForwardBackward
    | GradientCheckpoint
    | OptimStep
    | Sample
)
Outcome = None | int | LoraSpec | TrainOutput | SampleOutput | dict | EngineError


@dataclass(frozen=True)
class Evicted:
    """The engine dropped a sampler adapter to keep within its residency limits."""

    adapter_id: str
    reason: str


@dataclass
class Report:
    """What one round returned: one outcome per command, in order, and the events of the round."""

    outcomes: list[Outcome]
    events: list[Evicted] = field(default_factory=list)


class WorkerLost(EngineError):
    """The process that held the engine stopped; the work in flight and every adapter it held
    are gone (the handle starts a new one on next use)."""


TokenSink = Callable[[TokenEvent], None]


class EngineCore(Protocol):
    """The method-level engine a host drives (:class:`~.engine.Engine`; tests use fakes)."""

    info: ModelInfo

    def create_adapter(self, adapter_id: str, spec: LoraSpec) -> None: ...
    def copy_adapter(self, src_id: str, dst_id: str) -> None: ...
    def drop_adapter(self, adapter_id: str) -> None: ...
    def has_adapter(self, adapter_id: str) -> bool: ...
    def adapter_ids(self) -> list[str]: ...
    def load_adapter(self, adapter_id: str, directory: pathlib.Path, *, optimizer: bool) -> LoraSpec: ...
    def save_adapter(self, adapter_id: str, directory: pathlib.Path, *, optimizer: bool) -> int: ...
    def optim_step(self, adapter_id: str, params: AdamConfig) -> dict[str, float]: ...
    def gradient_checkpoint(self, adapter_id: str, action: str) -> None: ...
    def forward_backward_many(
        self, items: Sequence[tuple[str, list[TrainDatum], str, dict[str, float | str] | None, bool]]
    ) -> list[TrainOutput | EngineError]: ...
    def sample(self, jobs: list[SampleJob]) -> list[SampleOutput | EngineError]: ...


class EngineHandle(Protocol):
    """A server's view of one base model's engine, wherever it runs.

    ``start()`` loads the model (idempotent) and returns its :class:`ModelInfo`;
    ``run()`` executes one round. Both raise :class:`~.errors.ModelLoadError` when the
    model cannot be loaded and :class:`WorkerLost` when the engine's process died.
    Called from one thread at a time."""

    def start(self) -> ModelInfo: ...
    def run(self, commands: Sequence[Command]) -> Report: ...
    def resident(self) -> int: ...  # adapters in memory after the last round
    def close(self) -> None: ...

"""The compute engine of the self-hosted Tinker server.

One base model loaded once, many LoRA adapters on it, rows of several adapters
batched through the base model together. Imports no web framework and nothing
from the SDK or the rest of the server.

The interface (torch-free; the server's API process imports only these):
:mod:`.api` (typed commands and results, the :class:`EngineHandle` protocol),
:mod:`.rules` (limits and request validation), :mod:`.messages` (data types),
:mod:`.errors`, :mod:`.residency` (which adapters stay in memory), :mod:`.host`
(running commands on an engine, :class:`LocalEngine`), :mod:`.process` (the
engine in a worker process, :class:`ProcessEngine`; the worker is :mod:`.worker`),
:mod:`.names`.

The engine itself (torch; loaded on first access of these names or in the worker):
:mod:`.models` (resolving and loading base models), :mod:`.tiny` (the test model),
:mod:`.lora` (multi-adapter LoRA layers), :mod:`.losses` (loss computations),
:mod:`.train` (forward / forward_backward), :mod:`.optim` (AdamW),
:mod:`.sampling` (batched KV-cache decoding), :mod:`.checkpoint` (PEFT-format
checkpoints), :mod:`.engine` (the :class:`Engine` facade).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import AdapterNotFound, EngineError, ModelLoadError, UserInputError
from .messages import (
    AdamConfig,
    LoraSpec,
    ModelInfo,
    SampledSequence,
    SampleJob,
    SampleOutput,
    TokenEvent,
    TrainDatum,
    TrainOutput,
)
from .names import DEFAULT_MODEL, TINY_MODEL, known_models
from .rules import MAX_LORA_RANK, MAX_NUM_SAMPLES, MAX_TOPK_LOGPROBS

if TYPE_CHECKING:
    from .engine import Engine, load_engine
    from .lora import LORA_ALPHA

# Names whose modules import torch: resolved on first access.
_LAZY = {"Engine": ".engine", "load_engine": ".engine", "LORA_ALPHA": ".lora"}

__all__ = [
    "DEFAULT_MODEL",
    "LORA_ALPHA",
    "MAX_LORA_RANK",
    "MAX_NUM_SAMPLES",
    "MAX_TOPK_LOGPROBS",
    "TINY_MODEL",
    "AdamConfig",
    "AdapterNotFound",
    "Engine",
    "EngineError",
    "LoraSpec",
    "ModelInfo",
    "ModelLoadError",
    "SampleJob",
    "SampleOutput",
    "SampledSequence",
    "TokenEvent",
    "TrainDatum",
    "TrainOutput",
    "UserInputError",
    "known_models",
    "load_engine",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value

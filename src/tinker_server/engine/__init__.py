"""The compute engine of the self-hosted Tinker server.

One base model loaded once, many LoRA adapters on it, rows of several adapters
batched through the base model together. Imports no web framework and nothing
from the SDK or the rest of the server.

Modules: :mod:`.models` (resolving and loading base models), :mod:`.tiny` (the
test model), :mod:`.lora` (multi-adapter LoRA layers), :mod:`.losses` (loss
registry), :mod:`.train` (forward / forward_backward), :mod:`.optim` (AdamW),
:mod:`.sampling` (batched KV-cache decoding), :mod:`.checkpoint` (PEFT-format
checkpoints), :mod:`.engine` (the :class:`Engine` facade).
"""

from .engine import Engine, load_engine
from .errors import AdapterNotFound, EngineError, ModelLoadError, UserInputError
from .lora import LORA_ALPHA
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
from .models import DEFAULT_MODEL, TINY_MODEL, known_models
from .sampling import MAX_TOPK_LOGPROBS
from .train import validate_train_request

__all__ = [
    "validate_train_request",
    "DEFAULT_MODEL",
    "LORA_ALPHA",
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

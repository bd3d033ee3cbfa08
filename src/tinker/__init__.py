"""Tinker: fine-tune open-weight models through a simple training API.

    import tinker

    service = tinker.ServiceClient()
    trainer = service.create_lora_training_client(base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    trainer.forward_backward(data, "cross_entropy").result()
    trainer.optim_step(tinker.AdamParams(learning_rate=1e-4)).result()

The public surface is the sorted ``__all__`` below; everything else is private.
"""

# Attributes are imported on first use (PEP 562), so that `import tinker` stays cheap:
# the CLI entry point lives inside this package and must start in milliseconds.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._logs import setup_logging
from ._version import __title__, __version__

if TYPE_CHECKING:
    from . import types as types
    from ._constants import (
        DEFAULT_CONNECTION_LIMITS as DEFAULT_CONNECTION_LIMITS,
        DEFAULT_MAX_RETRIES as DEFAULT_MAX_RETRIES,
        DEFAULT_TIMEOUT as DEFAULT_TIMEOUT,
    )
    from ._exceptions import (
        APIConnectionError as APIConnectionError,
        APIError as APIError,
        APIResponseValidationError as APIResponseValidationError,
        APIStatusError as APIStatusError,
        APITimeoutError as APITimeoutError,
        AuthenticationError as AuthenticationError,
        BadRequestError as BadRequestError,
        ConflictError as ConflictError,
        InternalServerError as InternalServerError,
        NotFoundError as NotFoundError,
        PermissionDeniedError as PermissionDeniedError,
        RateLimitError as RateLimitError,
        RequestFailedError as RequestFailedError,
        TinkerError as TinkerError,
        UnprocessableEntityError as UnprocessableEntityError,
    )
    from ._futures import (
        APIFuture as APIFuture,
    )
    from ._sampling_client import (
        SamplingClient as SamplingClient,
    )
    from ._service_client import (
        ServiceClient as ServiceClient,
    )
    from ._training_client import (
        TrainingClient as TrainingClient,
    )
    from ._types import (
        NOT_GIVEN as NOT_GIVEN,
        NotGiven as NotGiven,
        Omit as Omit,
        RequestOptions as RequestOptions,
        Timeout as Timeout,
    )
    from .types import (
        AdamParams as AdamParams,
        BaseModel as BaseModel,
        Checkpoint as Checkpoint,
        CheckpointType as CheckpointType,
        Datum as Datum,
        EncodedTextChunk as EncodedTextChunk,
        ForwardBackwardOutput as ForwardBackwardOutput,
        LoraConfig as LoraConfig,
        ModelID as ModelID,
        ModelInput as ModelInput,
        ModelInputChunk as ModelInputChunk,
        OptimStepRequest as OptimStepRequest,
        OptimStepResponse as OptimStepResponse,
        ParsedCheckpointTinkerPath as ParsedCheckpointTinkerPath,
        SampledSequence as SampledSequence,
        SampleRequest as SampleRequest,
        SampleResponse as SampleResponse,
        SamplingParams as SamplingParams,
        StopReason as StopReason,
        TensorData as TensorData,
        TensorDtype as TensorDtype,
        TrainingRun as TrainingRun,
    )

_LAZY: dict[str, str] = {
    "types": "tinker.types",
    "DEFAULT_CONNECTION_LIMITS": "tinker._constants",
    "DEFAULT_MAX_RETRIES": "tinker._constants",
    "DEFAULT_TIMEOUT": "tinker._constants",
    "APIConnectionError": "tinker._exceptions",
    "APIError": "tinker._exceptions",
    "APIResponseValidationError": "tinker._exceptions",
    "APIStatusError": "tinker._exceptions",
    "APITimeoutError": "tinker._exceptions",
    "AuthenticationError": "tinker._exceptions",
    "BadRequestError": "tinker._exceptions",
    "ConflictError": "tinker._exceptions",
    "InternalServerError": "tinker._exceptions",
    "NotFoundError": "tinker._exceptions",
    "PermissionDeniedError": "tinker._exceptions",
    "RateLimitError": "tinker._exceptions",
    "RequestFailedError": "tinker._exceptions",
    "TinkerError": "tinker._exceptions",
    "UnprocessableEntityError": "tinker._exceptions",
    "APIFuture": "tinker._futures",
    "SamplingClient": "tinker._sampling_client",
    "ServiceClient": "tinker._service_client",
    "TrainingClient": "tinker._training_client",
    "NOT_GIVEN": "tinker._types",
    "NotGiven": "tinker._types",
    "Omit": "tinker._types",
    "RequestOptions": "tinker._types",
    "Timeout": "tinker._types",
    "AdamParams": "tinker.types",
    "BaseModel": "tinker.types",
    "Checkpoint": "tinker.types",
    "CheckpointType": "tinker.types",
    "Datum": "tinker.types",
    "EncodedTextChunk": "tinker.types",
    "ForwardBackwardOutput": "tinker.types",
    "LoraConfig": "tinker.types",
    "ModelID": "tinker.types",
    "ModelInput": "tinker.types",
    "ModelInputChunk": "tinker.types",
    "OptimStepRequest": "tinker.types",
    "OptimStepResponse": "tinker.types",
    "ParsedCheckpointTinkerPath": "tinker.types",
    "SampledSequence": "tinker.types",
    "SampleRequest": "tinker.types",
    "SampleResponse": "tinker.types",
    "SamplingParams": "tinker.types",
    "StopReason": "tinker.types",
    "TensorData": "tinker.types",
    "TensorDtype": "tinker.types",
    "TrainingRun": "tinker.types",
}

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIFuture",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AdamParams",
    "AuthenticationError",
    "BadRequestError",
    "BaseModel",
    "Checkpoint",
    "CheckpointType",
    "ConflictError",
    "DEFAULT_CONNECTION_LIMITS",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "Datum",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "InternalServerError",
    "LoraConfig",
    "ModelID",
    "ModelInput",
    "ModelInputChunk",
    "NOT_GIVEN",
    "NotFoundError",
    "NotGiven",
    "Omit",
    "OptimStepRequest",
    "OptimStepResponse",
    "ParsedCheckpointTinkerPath",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestFailedError",
    "RequestOptions",
    "SampleRequest",
    "SampleResponse",
    "SampledSequence",
    "SamplingClient",
    "SamplingParams",
    "ServiceClient",
    "StopReason",
    "TensorData",
    "TensorDtype",
    "Timeout",
    "TinkerError",
    "TrainingClient",
    "TrainingRun",
    "UnprocessableEntityError",
    "__title__",
    "__version__",
    "types",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tinker' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if name == "types" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


setup_logging()

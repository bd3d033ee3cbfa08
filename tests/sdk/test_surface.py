"""The public surface: names exported, import paths, and import weight."""

from __future__ import annotations

import subprocess
import sys

import tinker

EXPECTED_ALL = [
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


def test_public_names_are_pinned() -> None:
    assert sorted(tinker.__all__) == EXPECTED_ALL
    assert tinker.__all__ == sorted(tinker.__all__)
    for name in tinker.__all__:
        assert hasattr(tinker, name), name


def test_constants() -> None:
    assert tinker.__version__ == "0.5.1"
    assert tinker.__title__ == "tinker"
    assert tinker.DEFAULT_MAX_RETRIES == 10
    assert tinker.DEFAULT_TIMEOUT.read == 60
    assert tinker.DEFAULT_TIMEOUT.connect == 5
    assert tinker.DEFAULT_CONNECTION_LIMITS.max_connections == 1000
    assert tinker.DEFAULT_CONNECTION_LIMITS.max_keepalive_connections == 20
    assert not tinker.NOT_GIVEN
    assert repr(tinker.NOT_GIVEN) == "NOT_GIVEN"
    assert tinker.Timeout is __import__("httpx").Timeout


def test_exception_tree() -> None:
    assert issubclass(tinker.APIError, tinker.TinkerError)
    assert issubclass(tinker.APIStatusError, tinker.APIError)
    for cls in (
        tinker.BadRequestError,
        tinker.AuthenticationError,
        tinker.PermissionDeniedError,
        tinker.NotFoundError,
        tinker.ConflictError,
        tinker.UnprocessableEntityError,
        tinker.RateLimitError,
        tinker.InternalServerError,
    ):
        assert issubclass(cls, tinker.APIStatusError)
    assert issubclass(tinker.APITimeoutError, tinker.APIConnectionError)
    assert issubclass(tinker.APIConnectionError, tinker.APIError)
    assert issubclass(tinker.APIResponseValidationError, tinker.APIError)
    assert issubclass(tinker.RequestFailedError, tinker.TinkerError)
    assert not issubclass(tinker.RequestFailedError, tinker.APIError)


def test_upstream_import_paths() -> None:
    from tinker.lib.public_interfaces import (
        APIFuture,
        AwaitableConcurrentFuture,
        SamplingClient,
        ServiceClient,
        TrainingClient,
    )
    from tinker.lib.public_interfaces.rest_client import RestClient
    from tinker.lib.retry_handler import RetryConfig
    from tinker.lib.retryable_exception import RetryableException

    assert APIFuture is tinker.APIFuture
    assert issubclass(AwaitableConcurrentFuture, APIFuture)
    assert (ServiceClient, TrainingClient, SamplingClient) == (
        tinker.ServiceClient,
        tinker.TrainingClient,
        tinker.SamplingClient,
    )
    assert RestClient.__name__ == "RestClient"
    assert RetryConfig().max_connections == 1000
    assert issubclass(RetryableException, Exception)


def test_import_is_light() -> None:
    code = (
        "import sys, tinker; "
        "heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_logging_defaults() -> None:
    import logging

    code = "import logging, tinker; print(logging.getLogger('httpx').level, logging.getLogger('tinker').level)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(logging.WARNING), "0"]
    env = {**__import__("os").environ, "TINKER_LOG": "debug"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == [str(logging.DEBUG), str(logging.DEBUG)]

"""The hand-written client layer, at its upstream import path."""

from ..._futures import APIFuture, AwaitableConcurrentFuture
from ..._rest_client import RestClient
from ..._sampling_client import SamplingClient
from ..._service_client import ServiceClient
from ..._training_client import TrainingClient

__all__ = [
    "APIFuture",
    "AwaitableConcurrentFuture",
    "RestClient",
    "SamplingClient",
    "ServiceClient",
    "TrainingClient",
]

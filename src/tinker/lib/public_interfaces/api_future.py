"""``tinker.lib.public_interfaces.api_future`` (upstream import path)."""

from ..._futures import APIFuture, AwaitableConcurrentFuture

__all__ = ["APIFuture", "AwaitableConcurrentFuture"]

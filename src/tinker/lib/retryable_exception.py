"""``from tinker.lib.retryable_exception import RetryableException`` (upstream import path)."""

from .._exceptions import RetryableException

__all__ = ["RetryableException"]

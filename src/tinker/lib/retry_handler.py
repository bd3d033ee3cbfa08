"""``from tinker.lib.retry_handler import RetryConfig`` (upstream import path)."""

from .._retry_handler import RetryConfig, RetryHandler

__all__ = ["RetryConfig", "RetryHandler"]

"""``tinker.lib.public_interfaces.sampling_client`` (upstream import path)."""

from ..._sampling_client import SamplingClient

__all__ = ["SamplingClient"]

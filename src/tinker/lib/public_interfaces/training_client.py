"""``tinker.lib.public_interfaces.training_client`` (upstream import path)."""

from ..._custom_loss import CustomLossFnV1
from ..._training_client import TrainingClient

__all__ = ["CustomLossFnV1", "TrainingClient"]

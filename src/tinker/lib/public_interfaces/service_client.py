"""``tinker.lib.public_interfaces.service_client`` (upstream import path)."""

from ..._service_client import ServiceClient

__all__ = ["ServiceClient"]

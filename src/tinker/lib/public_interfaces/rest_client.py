"""``from tinker.lib.public_interfaces.rest_client import RestClient`` (upstream import path)."""

from ..._rest_client import RestClient

__all__ = ["RestClient"]

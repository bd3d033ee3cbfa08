"""Tests that need a real `tinker serve` process use the package's own launcher."""

from tinker_server.launch import background_server as live_server, free_port

__all__ = ["free_port", "live_server"]

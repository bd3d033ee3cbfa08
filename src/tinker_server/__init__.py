"""The Tinker API server: ``create_app(settings)`` builds it, ``tinker serve`` runs it."""

from __future__ import annotations

__version__ = "0.38.0"

__all__ = ["Settings", "__version__", "create_app"]


def __getattr__(name: str) -> object:
    # Lazy, so `import tinker_server.serve` (the CLI) stays light until it runs.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(name)

"""Package name and version (the 0.5.1 SDK this package is compatible with)."""

__all__ = ["__title__", "__version__"]

__title__ = "tinker"
__version__ = "0.5.1"

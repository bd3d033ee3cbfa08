"""Errors raised by the engine.

::

    EngineError                 base; anything the engine refuses or fails to do
     ├── UserInputError         the request's content is wrong; the message says exactly what
     ├── AdapterNotFound        no adapter with that id is loaded
     └── ModelLoadError         the base model cannot be resolved or loaded

The API layer maps these to HTTP errors in one table; the engine never builds
error responses itself.
"""

from __future__ import annotations

__all__ = ["COMPUTE_ERRORS", "AdapterNotFound", "EngineError", "ModelLoadError", "UserInputError"]

# Errors torch raises while computing (out of memory, a kernel refusing a shape): the
# request fails, the engine stays usable.
COMPUTE_ERRORS = (RuntimeError, MemoryError, ValueError, IndexError)


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class UserInputError(EngineError):
    """The request is malformed: a token id, a length, a loss name, a setting."""


class AdapterNotFound(EngineError):
    """The adapter id is not loaded in this engine."""

    def __init__(self, adapter_id: str) -> None:
        super().__init__(f"adapter {adapter_id!r} is not loaded")
        self.adapter_id = adapter_id

    def __reduce__(self) -> tuple[type[AdapterNotFound], tuple[str]]:  # pickled across the worker boundary
        return (AdapterNotFound, (self.adapter_id,))


class ModelLoadError(EngineError):
    """The base model could not be found or loaded."""

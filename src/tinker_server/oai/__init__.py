"""The OpenAI-compatible endpoints' service: completions and chat completions on base
models and ``tinker://`` checkpoints, through the same scheduler as Tinker sampling."""

from .service import OaiService

__all__ = ["OaiService"]

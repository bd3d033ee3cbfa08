"""Names of the models the engine resolves without a local path (see :mod:`.models`).
Torch-free, so the server can check its configured models without loading the engine."""

from __future__ import annotations

__all__ = ["DEFAULT_MODEL", "TINY_MODEL", "known_models"]

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_MODEL = "tinker-test/tiny-llama"


def known_models() -> list[str]:
    """Model names :func:`~.models.load_base_model` resolves without a local path."""
    return [DEFAULT_MODEL, TINY_MODEL]

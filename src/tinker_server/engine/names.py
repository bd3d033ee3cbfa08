"""Names of the models the engine resolves without a local path (see :mod:`.models`).
Torch-free, so the server can check its configured models without loading the engine."""

from __future__ import annotations

import pathlib

__all__ = ["DEFAULT_MODEL", "TINY_MODEL", "hf_cache_snapshot", "known_models", "model_directory"]

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_MODEL = "tinker-test/tiny-llama"


def known_models() -> list[str]:
    """Model names :func:`~.models.load_base_model` resolves without a local path."""
    return [DEFAULT_MODEL, TINY_MODEL]


def hf_cache_snapshot(model_name: str) -> pathlib.Path | None:
    """The cached snapshot directory of a hub repo id, or None (never goes online)."""
    if model_name.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    try:
        path = pathlib.Path(snapshot_download(model_name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None
    return path if (path / "config.json").exists() else None


def model_directory(model_name: str) -> pathlib.Path | None:
    """The model directory a name that is not one of :func:`known_models` stands for: a local
    directory, or a hub id's snapshot in the Hugging Face cache; None when it is neither."""
    path = pathlib.Path(model_name).expanduser()
    if path.is_dir():
        return path
    return hf_cache_snapshot(model_name)

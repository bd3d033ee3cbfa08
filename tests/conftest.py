"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TINKER_HOME whose ``models/`` cache is shared by every test that needs the real model.

    Converting SmolLM2 from its GGUF takes about 15 s, so it happens once per run
    (or never, when TINKER_TEST_MODEL_HOME points at a home that already has it).
    """
    shared = os.environ.get("TINKER_TEST_MODEL_HOME")
    if shared:
        return Path(shared)
    return tmp_path_factory.mktemp("model-home")

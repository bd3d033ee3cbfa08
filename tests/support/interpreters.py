"""Interpreters of the extra virtualenvs `make test` builds (official clients, the cookbook)."""

from __future__ import annotations

import os

import pytest

__all__ = ["python_from_env"]


def python_from_env(variable: str, what: str) -> str:
    """The interpreter named by ``variable``; without it the test skips locally and fails
    under CI (where `make test` must have built ``what``)."""
    python = os.environ.get(variable)
    if not python:
        if os.environ.get("CI"):
            pytest.fail(f"{variable} is not set: run the tests with `make test`")
        pytest.skip(f"{variable} not set (make test builds {what})")
    return python

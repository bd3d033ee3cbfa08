"""The official tinker==0.5.1 client, from its own virtualenv, against `tinker serve`.

`make test` builds that virtualenv and points TINKER_COMPAT_PYTHON at its
interpreter. Without it the tests skip locally, and fail under CI.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.interpreters import python_from_env
from tests.support.live_server import live_server
from tinker_server.engine import DEFAULT_MODEL, TINY_MODEL, load_engine

pytestmark = pytest.mark.compat

SCRIPT = Path(__file__).with_name("official_client_script.py")


@pytest.fixture(scope="module")
def compat_python() -> str:
    return python_from_env("TINKER_COMPAT_PYTHON", "the official 0.5.1 client's virtualenv")


def run_script(python: str, url: str, model: str, tokenizer_dir: Path, phase: str) -> None:
    proc = subprocess.run(
        [python, str(SCRIPT), url, model, str(tokenizer_dir), phase],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TINKER_TELEMETRY": "1"},
    )
    print(proc.stdout)
    assert proc.returncode == 0, f"official client failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert f"PASSED {phase}" in proc.stdout


@pytest.mark.slow
def test_official_client_pig_latin_loop(compat_python: str, model_home: Path, tmp_path: Path) -> None:
    tokenizer_dir = load_engine(DEFAULT_MODEL, home=model_home).info.tokenizer_dir
    (tmp_path / "models").symlink_to(model_home / "models")
    with live_server(tmp_path, [DEFAULT_MODEL]) as url:
        run_script(compat_python, url, DEFAULT_MODEL, tokenizer_dir, "train")


def test_official_rest_client(compat_python: str, tmp_path: Path) -> None:
    tokenizer_dir = load_engine(TINY_MODEL, home=tmp_path).info.tokenizer_dir
    with live_server(tmp_path, [TINY_MODEL]) as url:
        run_script(compat_python, url, TINY_MODEL, tokenizer_dir, "rest")

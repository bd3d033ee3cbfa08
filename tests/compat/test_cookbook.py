"""tinker-cookbook's own recipes (chat_sl, and math_rl on the arithmetic environment) against
a real `tinker serve`, offline, on SmolLM2.

The cookbook runs from a virtualenv of its own (the version pip resolves beside the official
tinker==0.38.0; pins in cookbook-constraints.txt), which also holds our server distribution
(`tinker-server`, installed from ./server): the server is started from that same virtualenv,
so one environment holds the server, the official SDK and the cookbook. `make test` builds it
and names its interpreter in TINKER_COOKBOOK_PYTHON. Without it the tests skip locally, and
fail under CI. The checks themselves are in cookbook_script.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.interpreters import python_from_env
from tests.support.live_server import live_server
from tinker_server.engine import DEFAULT_MODEL, load_engine

pytestmark = [pytest.mark.compat, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("cookbook_script.py")


@pytest.fixture(scope="module")
def cookbook_python() -> str:
    return python_from_env("TINKER_COOKBOOK_PYTHON", "the cookbook's virtualenv")


@pytest.fixture(scope="module")
def server(cookbook_python: str, model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for both recipes (SmolLM2 loads once), run by the cookbook's interpreter."""
    home = tmp_path_factory.mktemp("cookbook-server")
    (home / "models").symlink_to(model_home / "models")
    with live_server(home, [DEFAULT_MODEL], python=cookbook_python) as url:
        yield url


def test_one_environment_holds_server_sdk_and_cookbook(cookbook_python: str) -> None:
    code = (
        "import importlib.metadata as m, tinker, tinker_server, tinker_cookbook;"
        "print(m.version('tinker'), m.version('tinker-server'), m.version('tinker-cookbook'), tinker.__file__)"
    )
    out = subprocess.run([cookbook_python, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "0.38.0" and out[1] and out[2], out
    assert "site-packages" in out[3]  # the official SDK, not our source tree


def run_phase(python: str, phase: str, url: str, model_home: Path, work: Path) -> None:
    tokenizer_dir = load_engine(DEFAULT_MODEL, home=model_home).info.tokenizer_dir
    proc = subprocess.run(
        [python, str(SCRIPT), phase, url, DEFAULT_MODEL, str(tokenizer_dir), str(work)],
        capture_output=True,
        text=True,
        timeout=900,
        # A key the official client accepts (it refuses keys without the tml- prefix);
        # HOME keeps the cookbook's and the hub's defaults out of the real home.
        env={**os.environ, "TINKER_API_KEY": "tml-local", "HOME": str(work)},
    )
    print(proc.stdout)
    assert proc.returncode == 0, f"cookbook {phase} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    assert f"PASSED {phase}" in proc.stdout


def test_chat_sl_recipe_with_resume(cookbook_python: str, server: str, model_home: Path, tmp_path: Path) -> None:
    run_phase(cookbook_python, "sl", server, model_home, tmp_path)


def test_math_rl_arithmetic_importance_sampling(
    cookbook_python: str, server: str, model_home: Path, tmp_path: Path
) -> None:
    run_phase(cookbook_python, "rl", server, model_home, tmp_path)

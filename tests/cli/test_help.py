"""Help on every level, the static root help, and start-up imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from tinker.cli._app import app
from tinker.cli._root import COMMANDS, SHARED_OPTIONS, root_help

SRC = Path(__file__).resolve().parents[2] / "src"
HEAVY = ("rich", "httpx", "pydantic", "torch", "numpy", "tinker_server", "anyio", "transformers")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(SRC)]))
    return env


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = [[]]
    ctx = click.Context(app, info_name="tinker")
    for name in COMMANDS:
        command = app.get_command(ctx, name)
        assert command is not None, name
        paths.append([name])
        if isinstance(command, click.Group):
            paths += [[name, sub] for sub in command.list_commands(ctx)]
    return paths


def test_every_command_is_listed_and_loads() -> None:
    paths = _command_paths()
    assert ["checkpoint", "download"] in paths and ["session", "info"] in paths
    assert len(paths) == 1 + len(COMMANDS) + 2 + 6 + 2  # root, top level, run, checkpoint, session


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "tinker")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_on_every_level(invoke: Any, path: list[str], flag: str) -> None:
    result = invoke(*path, flag)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: {' '.join(['tinker', *path])} ")


def test_root_help_is_static_and_complete(invoke: Any) -> None:
    text = root_help()
    assert invoke("--help").stdout == text
    for name, (_, short) in COMMANDS.items():
        assert f"  {name}" in text and short in text
    declared = {opt for param in app.params for opt in param.opts}
    listed = {decl for _, decls, _, _ in SHARED_OPTIONS for decl in decls}
    assert declared == listed
    assert all(len(line) <= 80 for line in text.splitlines())


def test_fast_help_matches_click(invoke: Any) -> None:
    """``tinker --help`` answered without click prints what click would."""
    for flag in ("--help", "-h"):
        proc = subprocess.run(
            [sys.executable, "-m", "tinker.cli", flag], capture_output=True, text=True, env=_env(), check=True
        )
        assert proc.stdout == invoke(flag).stdout


# What the console script does (``tinker = "tinker.cli.__main__:cli"``).
CONSOLE_SCRIPT = "import re, sys; from tinker.cli.__main__ import cli; sys.exit(cli())"


def test_entry_point_is_the_click_group_for_click_tools() -> None:
    """``cli`` (the console script's target) stands in for the group: CliRunner works."""
    from click.testing import CliRunner

    from tinker.cli.__main__ import cli

    assert cli.name == "tinker" and cli.commands == app.commands
    result = CliRunner().invoke(cli, ["version", "-f", "json"])  # type: ignore[arg-type]
    assert result.exit_code == 0 and '"api": "v1"' in result.stdout


def _imported(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", CONSOLE_SCRIPT, *args],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    return modules


def test_root_help_imports_neither_click_nor_anything_heavy() -> None:
    modules = _imported("--help")
    assert "tinker.cli.__main__" in modules
    heavy = sorted({m.split(".")[0] for m in modules} & {*HEAVY, "click"})
    assert heavy == [], "tinker --help imported " + ", ".join(heavy)


@pytest.mark.parametrize("args", [["run", "list", "--help"], ["checkpoint", "download", "-h"], ["version", "-h"]])
def test_command_help_imports_nothing_heavy(args: list[str]) -> None:
    modules = _imported(*args)
    assert "click" in modules
    heavy = sorted({m.split(".")[0] for m in modules} & set(HEAVY))
    assert heavy == [], f"tinker {' '.join(args)} imported " + ", ".join(heavy)

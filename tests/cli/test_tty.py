"""The real executable in a pseudo-terminal: what a person sees."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import Tenant

pexpect = pytest.importorskip("pexpect")

SRC = Path(__file__).resolve().parents[2] / "src"


def _command() -> tuple[str, list[str]]:
    """The installed console script when there is one, else ``python -m tinker.cli``."""
    script = Path(sys.executable).with_name("tinker")
    if script.exists():
        return str(script), []
    found = shutil.which("tinker")
    if found:
        return found, []
    return sys.executable, ["-m", "tinker.cli"]


def _spawn(args: list[str], tenant: Tenant, cwd: Path) -> str:
    program, prefix = _command()
    env = {**os.environ, **tenant.env(), "TERM": "xterm-256color", "COLUMNS": "", "LINES": ""}
    env.pop("COLUMNS")
    env.pop("LINES")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(SRC)]))
    child = pexpect.spawn(
        program, [*prefix, *args], env=env, cwd=str(cwd), dimensions=(50, 160), encoding="utf-8", timeout=60
    )
    output = child.read()
    child.close()
    assert child.exitstatus == 0, output
    return str(output)


def test_table_and_progress_bars_render_in_a_terminal(tenant: Tenant, tmp_path: Path) -> None:
    run_id, paths = tenant.make_run()

    table = _spawn(["run", "list"], tenant, tmp_path)
    assert "1 training run" in table
    assert "┏" in table and "Run ID" in table  # a rich table, box drawing included
    assert run_id in table  # ":train:" not turned into an emoji

    download = _spawn(["checkpoint", "download", paths[1]], tenant, tmp_path)
    assert "sampler_weights/w1" in download  # the download bar's label
    assert "extracting" in download  # the extraction bar
    assert "100%" in download
    assert "━" in download  # the bar itself
    assert "Extracted to" in download
    assert (tmp_path / f"{run_id}_sampler_weights_w1" / "adapter_config.json").is_file()


def test_ctrl_c_during_download_leaves_nothing_behind(tmp_path: Path) -> None:
    from .archives import write_archive
    from .fake_api import fake_api

    archive = write_archive(tmp_path / "big.tar", [("weights.bin", os.urandom(4 << 20))]).read_bytes()
    (tmp_path / "big.tar").unlink()
    out = tmp_path / "out"
    with fake_api() as api:
        api.archive = archive
        api.archive_chunk_delay = 0.05  # about 3 s in all
        program, prefix = _command()
        env = {**os.environ, "TERM": "xterm-256color"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(SRC)]))
        child = pexpect.spawn(
            program,
            [*prefix, "--base-url", api.url, "checkpoint", "download", "tinker://r/weights/big", "-o", str(out)],
            env=env,
            dimensions=(40, 120),
            encoding="utf-8",
            timeout=30,
        )
        child.expect("weights/big")  # the download bar is up
        child.expect("MB")
        assert next(p.name for p in out.iterdir()).endswith(".partial")  # work in progress
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 130
    assert "Interrupted." in str(child.before)
    assert list(out.iterdir()) == []  # no target, no work directory

"""Official clients of the protobuf era (0.25, 0.38), each from its own virtualenv, against
a real `tinker serve`: the conformance matrix of the current wire (0.5.1 is in
test_official_client.py).

`make test` builds the virtualenvs and names their interpreters in
TINKER_COMPAT25_PYTHON and TINKER_COMPAT38_PYTHON. Without them the tests skip
locally, and fail under CI.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.interpreters import python_from_env
from tests.support.live_server import live_server
from tinker_server.engine import DEFAULT_MODEL, TINY_MODEL, load_engine

pytestmark = pytest.mark.compat

SCRIPT = Path(__file__).with_name("official_current_script.py")
VERSIONS = {"0.25": "TINKER_COMPAT25_PYTHON", "0.38": "TINKER_COMPAT38_PYTHON"}


def _python(version: str) -> str:
    return python_from_env(VERSIONS[version], f"the official {version} client's virtualenv")


def _env(home: Path) -> dict[str, str]:
    # The client reads its key from the environment in the CLI; never a real credential.
    return {**os.environ, "TINKER_API_KEY": "tml-local", "HOME": str(home)}


def run_script(python: str, url: str, model: str, tokenizer_dir: Path, phase: str, home: Path) -> str:
    proc = subprocess.run(
        [python, str(SCRIPT), url, model, str(tokenizer_dir), phase],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(home),
    )
    print(proc.stdout)
    assert proc.returncode == 0, f"official client failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert f"PASSED {phase}" in proc.stdout
    return proc.stdout


def run_cli(python: str, url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `tinker` command of that client's virtualenv."""
    tinker = str(Path(python).with_name("tinker"))
    return subprocess.run(
        [tinker, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(home), "TINKER_BASE_URL": url},
    )


@pytest.mark.slow
@pytest.mark.parametrize("version", list(VERSIONS))
def test_training_loop_on_smollm2(version: str, model_home: Path, tmp_path: Path) -> None:
    python = _python(version)
    tokenizer_dir = load_engine(DEFAULT_MODEL, home=model_home).info.tokenizer_dir
    (tmp_path / "models").symlink_to(model_home / "models")
    with live_server(tmp_path, [DEFAULT_MODEL]) as url:
        run_script(python, url, DEFAULT_MODEL, tokenizer_dir, "loop", tmp_path)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_training_loop_on_tiny_model(version: str, tmp_path: Path) -> None:
    python = _python(version)
    tokenizer_dir = load_engine(TINY_MODEL, home=tmp_path).info.tokenizer_dir
    with live_server(tmp_path, [TINY_MODEL]) as url:
        run_script(python, url, TINY_MODEL, tokenizer_dir, "loop", tmp_path)


def test_chunks_sent_out_of_order_equal_one_chunk(tmp_path: Path) -> None:
    """Also zstd request bodies (P8) and try-again answers on every long poll (P20)."""
    python = _python("0.38")
    tokenizer_dir = load_engine(TINY_MODEL, home=tmp_path).info.tokenizer_dir
    env = {
        "TINKER_CLIENT_CONFIG": json.dumps({"fwdbwd_max_chunk_len": 2, "proto_compress_fwdbwd": True}),
        "TINKER_LONG_POLL_S": "0.05",
    }
    with live_server(tmp_path, [TINY_MODEL], env=env) as url:
        run_script(python, url, TINY_MODEL, tokenizer_dir, "chunks", tmp_path)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert '"POST /api/v1/retrieve_future HTTP/1.1" 408' in log


@pytest.mark.parametrize("version", list(VERSIONS))
def test_client_side_probes(version: str, tmp_path: Path) -> None:
    python = _python(version)
    with live_server(tmp_path, [TINY_MODEL]) as url:
        out = run_script(python, url, TINY_MODEL, tmp_path, "probes", tmp_path)
    assert "MARK constructed" in out
    requests = [
        line
        for line in (tmp_path / "server.log").read_text(errors="replace").splitlines()
        if '"POST /api' in line or '"GET /api' in line
    ]
    assert not any("/create_session" in line for line in requests), requests  # P1, P2, P3: no session made
    assert not any("/create_model" in line for line in requests)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_cli_of_that_version(version: str, tmp_path: Path) -> None:
    python = _python(version)
    tokenizer_dir = load_engine(TINY_MODEL, home=tmp_path).info.tokenizer_dir
    with live_server(tmp_path, [TINY_MODEL]) as url:
        out = run_script(python, url, TINY_MODEL, tokenizer_dir, "checkpoint", tmp_path)
        path = next(line.split()[1] for line in out.splitlines() if line.startswith("CHECKPOINT "))
        run_id = path.removeprefix("tinker://").split("/")[0]

        runs = run_cli(python, url, tmp_path, "-f", "json", "run", "list")
        assert runs.returncode == 0, runs.stderr
        assert run_id in {r["training_run_id"] for r in json.loads(runs.stdout)["runs"]}

        ckpts = run_cli(python, url, tmp_path, "-f", "json", "checkpoint", "list", "--run-id", run_id)
        assert ckpts.returncode == 0, ckpts.stderr
        assert path in {c["tinker_path"] for c in json.loads(ckpts.stdout)["checkpoints"]}

        target = tmp_path / "downloaded"
        download = run_cli(python, url, tmp_path, "checkpoint", "download", path, "-o", str(target))
        assert download.returncode == 0, download.stdout + download.stderr
        files = {p.name for p in target.rglob("*") if p.is_file()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files, files

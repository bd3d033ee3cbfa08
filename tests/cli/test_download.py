"""``tinker checkpoint download``: target naming, --output/--force, atomicity, safety."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .archives import MALICIOUS, benign, write_archive
from .conftest import Tenant, closed_port_url
from .fake_api import FakeApi, fake_api

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_leaked_clients() -> Iterator[None]:
    """Let those warnings fire here, where they are ignored, not in a later test."""
    yield
    gc.collect()


FAKE_PATH = "tinker://run-1:train:0/weights/final"
FAKE_TARGET = "run-1:train:0_weights_final"


@pytest.fixture
def seeded(tenant: Tenant) -> tuple[Tenant, str, list[str]]:
    run_id, paths = tenant.make_run()
    return tenant, run_id, paths


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with fake_api() as api:
        yield api


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_download_into_the_current_directory(
    invoke: Any, seeded: tuple[Tenant, str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, run_id, paths = seeded
    monkeypatch.chdir(tmp_path)
    result = invoke("checkpoint", "download", paths[1], env=tenant.env())
    assert result.exit_code == 0, result.output
    target = tmp_path / f"{run_id}_sampler_weights_w1"
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((target / "adapter_config.json").read_text())["r"] == 4
    out = " ".join(result.stdout.split())
    assert f"Checkpoint Download: {paths[1]}" in out
    assert "Archive Size" in out and "Extracted to" in out
    assert str(target) in result.stdout  # absolute: the cwd was used
    assert _leftovers(tmp_path) == []  # no archive, no work directory


def test_download_json_with_output(
    invoke: Any, seeded: tuple[Tenant, str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, run_id, paths = seeded
    monkeypatch.chdir(tmp_path)
    result = invoke("-f", "json", "checkpoint", "download", paths[0], "-o", "models/new", env=tenant.env())
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # silent: no progress bars
    data = json.loads(result.stdout)
    destination = os.path.join("models", "new", f"{run_id}_weights_s1")
    assert data["checkpoint_path"] == paths[0]
    assert data["destination"] == destination  # relative, as given
    assert data["file_size_bytes"] > 0
    assert (tmp_path / destination / "adapter_model.safetensors").is_file()
    assert _leftovers(tmp_path / "models" / "new") == []


def test_existing_target_is_refused_before_any_request(invoke: Any, tmp_path: Path) -> None:
    (tmp_path / FAKE_TARGET).mkdir()
    # nothing listens there: the check must come first
    result = invoke("checkpoint", "download", FAKE_PATH, "-o", str(tmp_path), "--base-url", closed_port_url())
    assert result.exit_code == 1
    assert f"Error: Target directory already exists: {tmp_path / FAKE_TARGET}" in result.stderr
    assert "Use --force to overwrite or choose a different output directory." in result.stderr


def test_force_replaces_the_target(invoke: Any, seeded: tuple[Tenant, str, list[str]], tmp_path: Path) -> None:
    tenant, run_id, paths = seeded
    target = tmp_path / f"{run_id}_weights_s1"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    result = invoke("checkpoint", "download", paths[0], "-o", str(tmp_path), "--force", env=tenant.env())
    assert result.exit_code == 0, result.output
    assert not (target / "stale.txt").exists()
    assert (target / "adapter_config.json").is_file()
    assert _leftovers(tmp_path) == []


def test_download_from_the_fake_server(invoke: Any, api: FakeApi, tmp_path: Path) -> None:
    api.archive = benign(tmp_path / "good.tar.gz").read_bytes()
    result = invoke(
        "-f", "json", "checkpoint", "download", FAKE_PATH, "-o", str(tmp_path / "out"), "--base-url", api.url
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / FAKE_TARGET / "nested" / "notes.txt").read_text() == "hello"
    assert "GET /api/v1/training_runs/run-1:train:0/checkpoints/weights/final/archive" in api.requests


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archive_is_refused(invoke: Any, api: FakeApi, tmp_path: Path, case: str) -> None:
    api.archive = write_archive(tmp_path / "evil.tar", MALICIOUS[case]).read_bytes()
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}
    result = invoke("checkpoint", "download", FAKE_PATH, "-o", str(out), "--base-url", api.url)
    assert result.exit_code == 1
    assert "Error: Refusing to extract an unsafe archive" in result.stderr
    assert f"Nothing was written to {out / FAKE_TARGET}" in " ".join(result.stderr.split())
    assert {p for p in tmp_path.rglob("*")} == before | {out}  # only the (empty) -o directory
    assert list(out.iterdir()) == []


def test_expired_signed_url(invoke: Any, api: FakeApi, tmp_path: Path) -> None:
    api.archive_status = 403
    result = invoke("checkpoint", "download", FAKE_PATH, "-o", str(tmp_path), "--base-url", api.url)
    assert result.exit_code == 1
    assert "Error: Failed to download checkpoint: HTTP 403" in result.stderr
    assert "expired" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_nothing(invoke: Any, api: FakeApi, tmp_path: Path) -> None:
    api.archive = benign(tmp_path / "good.tar").read_bytes()
    (tmp_path / "good.tar").unlink()
    api.archive_truncated = True
    result = invoke("checkpoint", "download", FAKE_PATH, "-o", str(tmp_path), "--base-url", api.url)
    assert result.exit_code == 1
    assert "Error: Failed to download checkpoint" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_corrupt_archive(invoke: Any, api: FakeApi, tmp_path: Path) -> None:
    api.archive = b"not a tar archive" * 1000
    result = invoke("checkpoint", "download", FAKE_PATH, "-o", str(tmp_path), "--base-url", api.url)
    assert result.exit_code == 1
    assert "Error: Failed to extract archive" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_body_cut_mid_archive_leaves_nothing(invoke: Any, api: FakeApi, tmp_path: Path) -> None:
    data = write_archive(tmp_path / "big.tar", [("a.bin", os.urandom(300_000)), ("b.bin", b"b")]).read_bytes()
    (tmp_path / "big.tar").unlink()
    api.archive = data[: len(data) // 2]  # extraction is under way when the body stops
    api.archive_truncated = True
    result = invoke("checkpoint", "download", FAKE_PATH, "-o", str(tmp_path), "--base-url", api.url)
    assert result.exit_code == 1
    assert "Error: Failed to download checkpoint" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_force_keeps_the_old_target_when_the_download_fails(invoke: Any, api: FakeApi, tmp_path: Path) -> None:
    target = tmp_path / FAKE_TARGET
    target.mkdir()
    (target / "stale.txt").write_text("old")
    api.archive = b"not a tar archive" * 1000
    result = invoke("checkpoint", "download", FAKE_PATH, "-o", str(tmp_path), "--force", "--base-url", api.url)
    assert result.exit_code == 1
    assert "Error: Failed to extract archive" in result.stderr
    assert (target / "stale.txt").read_text() == "old"  # replaced only by a complete download
    assert _leftovers(tmp_path) == []


def test_unreachable_archive_url(tmp_path: Path) -> None:
    from tinker.cli._download import fetch_and_extract
    from tinker.cli._errors import CliError

    with pytest.raises(CliError, match="Failed to download checkpoint"):
        fetch_and_extract(f"{closed_port_url()}/archive.tar", tmp_path / "t", show_progress=False)
    assert list(tmp_path.iterdir()) == []

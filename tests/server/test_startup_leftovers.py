"""Startup removes the hidden folders a killed save or delete leaves under the checkpoints
folder (``runtime.remove_checkpoint_leftovers``), and restores a checkpoint caught between
being moved away and its replacement being moved in."""

from __future__ import annotations

import logging
import pathlib

import pytest

from tinker_server.runtime import Runtime, remove_checkpoint_leftovers
from tinker_server.settings import Settings

from .fake_engine import FakeEngine

RUN = "0b4f0c5e-1111-2222-3333-444455556666:train:0"


def _folder(path: pathlib.Path, content: str = "x") -> pathlib.Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(content)
    return path


def test_leftovers_are_removed_and_kept_checkpoints_untouched(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "checkpoints"
    weights = root / RUN / "weights"
    kept = _folder(weights / "step-1", "kept")
    tmp = _folder(weights / ".step-2.tmp-0123abcd")  # a save killed before its rename
    deleted = _folder(root / RUN / "sampler_weights" / ".deleted-s1-89abcdef")  # a delete killed midway
    replaced = _folder(weights / "step-3", "new")  # replaced: the old copy was left behind
    old_of_replaced = _folder(weights / ".step-3.old-feedface", "old")
    # Killed between "move the old copy away" and "move the new one in": the old copy is the
    # checkpoint the database describes, so it comes back under its name.
    interrupted_old = _folder(weights / ".step-4.old-deadbeef", "old-4")
    interrupted_tmp = _folder(weights / ".step-4.tmp-c0ffee00", "new-4")

    assert remove_checkpoint_leftovers(root) == 4
    assert kept.is_dir() and (kept / "adapter_config.json").read_text() == "kept"
    assert (replaced / "adapter_config.json").read_text() == "new"
    assert (weights / "step-4" / "adapter_config.json").read_text() == "old-4"
    for gone in (tmp, deleted, old_of_replaced, interrupted_old, interrupted_tmp):
        assert not gone.exists()
    hidden = list(root.rglob(".*"))
    assert hidden == []
    assert remove_checkpoint_leftovers(root) == 0
    assert remove_checkpoint_leftovers(tmp_path / "missing") == 0


def test_server_startup_removes_leftovers_and_logs_how_many(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path / "home", models=["fake/model-a"])
    leftover = _folder(settings.checkpoints_dir / RUN / "weights" / ".ckpt-1.tmp-abcdef01")
    runtime = Runtime(settings, engine_loader=lambda name: FakeEngine(name, settings.home))
    with caplog.at_level(logging.WARNING, logger="tinker_server.runtime"):
        runtime.ensure_started()
    try:
        assert not leftover.exists()
        assert any("removed 1 half-written or half-deleted checkpoint folder" in r.message for r in caplog.records)
    finally:
        runtime.stop()

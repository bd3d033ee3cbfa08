"""Every API command through CliRunner against the real server app."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import TINY_MODEL, Tenant


@pytest.fixture
def seeded(tenant: Tenant) -> tuple[Tenant, str, list[str]]:
    """A tenant with one run holding a training (s1) and a sampler (w1) checkpoint."""
    run_id, paths = tenant.make_run()
    return tenant, run_id, paths


def flat(text: str) -> str:
    """``text`` with runs of whitespace made one space (rich wraps long titles)."""
    return " ".join(text.split())


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- runs ------------------------------------------------------------------------------------


def test_run_list_table_renders_ids_literally(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, run_id, _ = seeded
    assert ":train:" in run_id  # rich would read ":train:" as an emoji shortcode
    result = invoke("run", "list", env=tenant.env())
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "1 training run" in out and "training runs" not in out
    for column in ("Run ID", "Base Model", "Owner", "LoRA", "Last Update", "Status"):
        assert column in out
    assert run_id in out
    assert TINY_MODEL in out
    assert "Rank 4" in out and "Active" in out and "just now" in out
    assert result.stderr == ""


def test_run_list_json(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, run_id, paths = seeded
    data = _json(invoke("-f", "json", "run", "list", env=tenant.env()))
    assert list(data) == ["runs"]
    (run,) = data["runs"]
    assert run["training_run_id"] == run_id
    assert run["base_model"] == TINY_MODEL
    assert run["is_lora"] is True and run["lora_rank"] == 4
    # datetimes are written with str(): a space, not ISO's "T" (as in 0.5.1)
    assert " " in run["last_request_time"] and "T" not in run["last_request_time"]
    assert run["last_checkpoint"]["tinker_path"] == paths[0]
    assert run["last_sampler_checkpoint"]["tinker_path"] == paths[1]


def test_format_option_also_accepted_after_the_subcommand(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, run_id, _ = seeded
    data = _json(invoke("run", "list", "-f", "json", env=tenant.env()))
    assert data["runs"][0]["training_run_id"] == run_id


def test_run_list_empty(invoke: Any, tenant: Tenant) -> None:
    result = invoke("run", "list", env=tenant.env())
    assert result.exit_code == 0
    assert "No training runs found" in result.stdout
    assert _json(invoke("-f", "json", "run", "list", env=tenant.env())) == {"runs": []}


def test_run_list_pages_and_limit(invoke: Any, tenant: Tenant) -> None:
    run_ids = {tenant.make_run(states=(), samplers=())[0] for _ in range(3)}
    # all of them, one per request
    data = _json(invoke("-f", "json", "run", "list", "--limit", "0", "--page-size", "1", env=tenant.env()))
    assert {run["training_run_id"] for run in data["runs"]} == run_ids
    # two of three, across two pages: the title says one more exists
    result = invoke("run", "list", "--limit", "2", "--page-size", "1", env=tenant.env())
    assert result.exit_code == 0
    assert "2 training runs (1 more not shown, use --limit to see more)" in flat(result.stdout)
    data = _json(invoke("-f", "json", "run", "list", "--limit", "2", "--page-size", "2", env=tenant.env()))
    assert len(data["runs"]) == 2


def test_run_info(invoke: Any, tenant: Tenant) -> None:
    trainer = tenant.service().create_lora_training_client(
        base_model=TINY_MODEL, rank=4, user_metadata={"purpose": "test :fire:"}
    )
    trainer.save_state("s1").result()
    run_id = trainer.model_id
    result = invoke("run", "info", run_id, env=tenant.env())
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"Training Run: {run_id}" in out
    assert "Yes (Rank 4)" in out
    assert "Last Training Checkpoint" in out and "weights/s1" in out
    assert "Metadata" in out and "- purpose" in out and "test :fire:" in out
    data = _json(invoke("-f", "json", "run", "info", run_id, env=tenant.env()))
    assert data["training_run_id"] == run_id
    assert data["user_metadata"] == {"purpose": "test :fire:"}


def test_run_info_not_found(invoke: Any, tenant: Tenant) -> None:
    result = invoke("run", "info", "no-such-run", env=tenant.env())
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Error: Training run not found: no-such-run" in result.stderr
    assert "tinker run list" in result.stderr


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_list_all_and_by_run(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, run_id, paths = seeded
    result = invoke("checkpoint", "list", env=tenant.env())
    assert result.exit_code == 0, result.output
    assert "2 checkpoints" in result.stdout
    for column in ("Checkpoint ID", "Type", "Size", "Public", "Created", "Path"):
        assert column in result.stdout
    for path in paths:
        assert path in result.stdout
    assert "KB" in result.stdout and "No" in result.stdout

    result = invoke("checkpoint", "list", "--run-id", run_id, env=tenant.env())
    assert f"2 checkpoints for run {run_id}" in result.stdout

    data = _json(invoke("-f", "json", "checkpoint", "list", "--run-id", run_id, env=tenant.env()))
    assert data["run_id"] == run_id
    assert sorted(c["tinker_path"] for c in data["checkpoints"]) == sorted(paths)
    data = _json(invoke("-f", "json", "checkpoint", "list", env=tenant.env()))
    assert list(data) == ["checkpoints"]
    types = {c["tinker_path"]: c["checkpoint_type"] for c in data["checkpoints"]}
    assert types == {paths[0]: "training", paths[1]: "sampler"}


def test_checkpoint_list_pages(invoke: Any, tenant: Tenant) -> None:
    _, paths = tenant.make_run(states=("a", "b"), samplers=("c",))
    data = _json(invoke("-f", "json", "checkpoint", "list", "--limit", "0", "--page-size", "1", env=tenant.env()))
    assert sorted(c["tinker_path"] for c in data["checkpoints"]) == sorted(paths)
    result = invoke("checkpoint", "list", "--limit", "2", "--page-size", "1", env=tenant.env())
    assert "2 checkpoints (1 more not shown, use --limit to see more)" in flat(result.stdout)


def test_checkpoint_list_empty(invoke: Any, tenant: Tenant) -> None:
    assert "No checkpoints found" in invoke("checkpoint", "list", env=tenant.env()).stdout


def test_checkpoint_info(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, run_id, paths = seeded
    result = invoke("checkpoint", "info", paths[0], env=tenant.env())
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Checkpoint: weights/s1" in out
    assert paths[0] in out and run_id in out and "training" in out
    data = _json(invoke("-f", "json", "checkpoint", "info", paths[1], env=tenant.env()))
    assert data["checkpoint_id"] == "sampler_weights/w1"
    assert data["tinker_path"] == paths[1]
    assert data["public"] is False and data["size_bytes"] > 0


def test_checkpoint_info_not_found(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, run_id, _ = seeded
    missing = f"tinker://{run_id}/weights/nope"
    result = invoke("checkpoint", "info", missing, env=tenant.env())
    assert result.exit_code == 1
    assert f"Error: Checkpoint not found: {missing}" in result.stderr
    result = invoke("checkpoint", "info", "tinker://no-such-run/weights/x", env=tenant.env())
    assert result.exit_code == 1
    assert "Checkpoint not found" in result.stderr and "no-such-run" in result.stderr


@pytest.mark.parametrize("path", ["run-1/weights/x", "tinker://a/b", "tinker://run/other/x"])
def test_invalid_checkpoint_path(invoke: Any, path: str) -> None:
    # checked before any request: no server needed
    for command in ("info", "delete", "download", "publish", "unpublish"):
        result = invoke("checkpoint", command, path)
        assert result.exit_code == 1, (command, result.output)
        assert f"Error: Invalid checkpoint path: Invalid tinker path: {path}" in result.stderr
        assert "tinker://RUN_ID/weights/NAME" in result.stderr


def test_publish_and_unpublish(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, _, paths = seeded
    result = invoke("checkpoint", "publish", paths[0], env=tenant.env())
    assert result.exit_code == 0, result.output
    assert f"Published {paths[0]}" in result.stdout
    info = _json(invoke("-f", "json", "checkpoint", "info", paths[0], env=tenant.env()))
    assert info["public"] is True

    again = invoke("checkpoint", "publish", paths[0], env=tenant.env())
    assert again.exit_code == 1
    assert "already public" in again.stderr

    data = _json(invoke("-f", "json", "checkpoint", "unpublish", paths[0], env=tenant.env()))
    assert data == {"checkpoint_path": paths[0], "public": False}
    info = _json(invoke("-f", "json", "checkpoint", "info", paths[0], env=tenant.env()))
    assert info["public"] is False


def test_delete_with_yes(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, _, paths = seeded
    result = invoke("checkpoint", "delete", paths[0], "-y", env=tenant.env())
    assert result.exit_code == 0, result.output
    assert f"Deleted {paths[0]}" in result.stdout
    assert invoke("checkpoint", "info", paths[0], env=tenant.env()).exit_code == 1


def test_delete_confirmed(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, _, paths = seeded
    result = invoke("checkpoint", "delete", paths[1], env=tenant.env(), input="y\n")
    assert result.exit_code == 0, result.output
    # the checkpoint, the warning and the prompt are on stderr
    assert "Checkpoint: sampler_weights/w1" in result.stderr
    assert "WARNING: This action is permanent and cannot be undone." in result.stderr
    assert "Are you sure you want to delete this checkpoint? [y/N]:" in result.stderr
    assert result.stdout == f"Deleted {paths[1]}\n"
    assert invoke("checkpoint", "info", paths[1], env=tenant.env()).exit_code == 1


def test_delete_declined_keeps_the_checkpoint(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, _, paths = seeded
    result = invoke("checkpoint", "delete", paths[0], env=tenant.env(), input="n\n")
    assert result.exit_code == 0
    assert "Deletion cancelled." in result.stderr
    assert result.stdout == ""
    assert invoke("checkpoint", "info", paths[0], env=tenant.env()).exit_code == 0
    # JSON mode: stdout is only the JSON answer
    result = invoke("-f", "json", "checkpoint", "delete", paths[0], env=tenant.env(), input="\n")
    assert json.loads(result.stdout) == {"checkpoint_path": paths[0], "deleted": False}


def test_delete_eof_aborts(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, _, paths = seeded
    result = invoke("checkpoint", "delete", paths[0], env=tenant.env(), input="")
    assert result.exit_code == 1
    assert "Aborted!" in result.stderr
    assert invoke("checkpoint", "info", paths[0], env=tenant.env()).exit_code == 0


def test_delete_unknown_checkpoint_shows_the_path(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, run_id, _ = seeded
    missing = f"tinker://{run_id}/weights/nope"
    result = invoke("checkpoint", "delete", missing, env=tenant.env(), input="n\n")
    assert f"Checkpoint path: {missing}" in result.stderr
    assert result.exit_code == 0


# -- sessions --------------------------------------------------------------------------------


def test_session_list_and_info(invoke: Any, seeded: tuple[Tenant, str, list[str]]) -> None:
    tenant, run_id, _ = seeded
    data = _json(invoke("-f", "json", "session", "list", "--limit", "0", env=tenant.env()))
    sessions = data["sessions"]
    assert sessions and all(isinstance(s, str) for s in sessions)
    result = invoke("session", "list", env=tenant.env())
    assert result.exit_code == 0 and "Session ID" in result.stdout

    infos = [_json(invoke("-f", "json", "session", "info", s, env=tenant.env())) for s in sessions]
    owner = [i for i in infos if run_id in i["training_run_ids"]]
    assert len(owner) == 1
    session_id = owner[0]["session_id"]
    result = invoke("session", "info", session_id, env=tenant.env())
    assert result.exit_code == 0
    assert f"Session: {session_id}" in result.stdout and run_id in result.stdout


def test_session_list_pages(invoke: Any, tenant: Tenant) -> None:
    for _ in range(3):
        tenant.service()
    everything = _json(invoke("-f", "json", "session", "list", "--limit", "0", env=tenant.env()))
    paged = _json(invoke("-f", "json", "session", "list", "--limit", "0", "--page-size", "2", env=tenant.env()))
    assert set(everything["sessions"]) <= set(paged["sessions"])  # the CLI's own sessions add up
    result = invoke("session", "list", "--limit", "2", "--page-size", "1", env=tenant.env())
    assert "2 sessions (more not shown, use --limit to see more)" in flat(result.stdout)


def test_session_info_not_found(invoke: Any, tenant: Tenant) -> None:
    result = invoke("session", "info", "no-such-session", env=tenant.env())
    assert result.exit_code == 1
    assert "Error: Session not found: no-such-session" in result.stderr


# -- version ---------------------------------------------------------------------------------


def test_version(invoke: Any) -> None:
    result = invoke("version")
    assert result.exit_code == 0
    assert result.stdout.startswith("tinker 0.5.1\n")
    assert "API: v1" in result.stdout
    data = _json(invoke("-f", "json", "version"))
    assert data == {"cli": "0.5.1", "sdk": "0.5.1", "api": "v1", "protocol": "0.5.1"}

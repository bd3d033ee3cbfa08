"""``tinker-server admin``: keys and usage from the command line, against a home (no
server needed); and the real server process in both modes."""

from __future__ import annotations

import json
import pathlib
import sqlite3
import subprocess
import sys

import httpx
from click.testing import CliRunner

from tinker_server.admin import ByteSize
from tinker_server.auth import KeyStore, hash_key
from tinker_server.cli import main
from tinker_server.db import Database
from tinker_server.launch import background_server, free_port
from tinker_server.tenants import Quota

CLI = [sys.executable, "-c", "from tinker_server.cli import main; main()"]


def _run(home: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "admin", *args, "--home", str(home)], capture_output=True, text=True, timeout=120)


def test_key_create_list_revoke(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    runner = CliRunner()
    created = runner.invoke(
        main,
        [
            "admin",
            "key",
            "create",
            "alice",
            "--max-training-runs",
            "2",
            "--max-lora-rank",
            "32",
            "--base-model",
            "m/a",
            "--base-model",
            "m/b",
            "--max-queued-requests",
            "10",
            "--tokens-per-minute",
            "5000",
            "--max-checkpoint-bytes",
            "2GB",
            "--weight",
            "2.5",
            "--home",
            str(home),
        ],
    )
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert secret.startswith("tml-") and "\n" not in secret  # only the key on stdout: scripts can capture it
    assert "only time the key is shown" in created.stderr and "alice" in created.stderr
    store = KeyStore(Database(f"sqlite:///{home / 'tinker.db'}"))
    key = store.lookup(secret)
    assert key is not None and key.name == "alice"
    assert key.quota == Quota(
        max_training_runs=2,
        max_lora_rank=32,
        base_models=("m/a", "m/b"),
        max_queued_requests=10,
        tokens_per_minute=5000,
        max_checkpoint_bytes=2 * 10**9,
        weight=2.5,
    )
    assert runner.invoke(main, ["admin", "key", "create", "bob", "--home", str(home)]).exit_code == 0

    listed = runner.invoke(main, ["admin", "key", "list", "--home", str(home)])
    assert listed.exit_code == 0 and secret not in listed.output
    lines = listed.output.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "CREATED"]
    assert "alice" in lines[1] and "rank<=32" in lines[1] and "models=m/a,m/b" in lines[1] and "weight=2.5" in lines[1]
    assert "bob" in lines[2] and "no limits" in lines[2]
    as_json = [
        json.loads(line)
        for line in runner.invoke(main, ["admin", "key", "list", "--json", "--home", str(home)]).output.splitlines()
    ]
    assert [(k["name"], k["revoked_at"]) for k in as_json] == [("alice", None), ("bob", None)]
    assert as_json[0]["quota"]["base_models"] == ["m/a", "m/b"]

    revoked = runner.invoke(main, ["admin", "key", "revoke", "alice", "--home", str(home)])
    assert revoked.exit_code == 0 and "Revoked key 'alice'" in revoked.output
    again = runner.invoke(main, ["admin", "key", "revoke", str(key.id), "--home", str(home)])
    assert again.exit_code == 0 and "already revoked" in again.output
    assert store.get("alice").revoked and not store.get("bob").revoked
    listed = runner.invoke(main, ["admin", "key", "list", "--json", "--home", str(home)])
    assert json.loads(listed.output.splitlines()[0])["revoked_at"] is not None

    # Mistakes: a clear sentence, exit code 1 or 2, never a traceback.
    missing = runner.invoke(main, ["admin", "key", "revoke", "nobody", "--home", str(home)])
    assert missing.exit_code == 1 and "no key named or numbered 'nobody'" in missing.output
    duplicate = runner.invoke(main, ["admin", "key", "create", "bob", "--home", str(home)])
    assert duplicate.exit_code == 1 and "exists" in duplicate.output
    bad = runner.invoke(main, ["admin", "key", "create", "x", "--max-lora-rank", "0", "--home", str(home)])
    assert bad.exit_code == 2 and "--max-lora-rank" in bad.output
    bad = runner.invoke(main, ["admin", "key", "create", "x", "--max-checkpoint-bytes", "lots", "--home", str(home)])
    assert bad.exit_code == 2 and "not a size" in bad.output
    assert missing.exception is None or isinstance(missing.exception, SystemExit)


def test_byte_sizes() -> None:
    size = ByteSize()
    assert [size.convert(v, None, None) for v in ("100", "1k", "1KB", "1KiB", "2GiB", "1.5M")] == [
        100,
        1000,
        1000,
        1024,
        2 * 2**30,
        1_500_000,
    ]


def test_empty_home(tmp_path: pathlib.Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["admin", "key", "list", "--home", str(tmp_path / "new")])
    assert listed.exit_code == 0 and "No keys issued" in listed.output
    used = runner.invoke(main, ["admin", "usage", "--home", str(tmp_path / "new")])
    assert used.exit_code == 0 and "No usage recorded yet" in used.output


def test_usage_command(tmp_path: pathlib.Path) -> None:
    """The operator's table, from rows a server wrote (``test_keys.py`` drives the counting)."""
    home = tmp_path / "home"
    runner = CliRunner()
    secret = runner.invoke(main, ["admin", "key", "create", "alice", "--home", str(home)]).stdout.strip()
    runner.invoke(main, ["admin", "key", "create", "bob", "--home", str(home)])
    store = KeyStore(Database(f"sqlite:///{home / 'tinker.db'}"))
    alice = store.get("alice")
    with sqlite3.connect(home / "tinker.db") as conn:
        conn.execute(
            "INSERT INTO usage (owner, train_requests, train_tokens, sample_requests, sampled_tokens, first_time, "
            "last_time) VALUES (?, 3, 12345, 2, 678, '2025-01-01 00:00:00', '2025-01-02 00:00:00')",
            (alice.owner,),
        )
        conn.execute(
            "INSERT INTO checkpoints (run_id, owner, checkpoint_id, checkpoint_type, time, tinker_path, size_bytes, "
            "public) VALUES ('r', ?, 'weights/a', 'training', '2025-01-01 00:00:00', 'tinker://r/weights/a', 4096, 0)",
            (alice.owner,),
        )
    table = runner.invoke(main, ["admin", "usage", "--home", str(home)])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert "TRAINED TOKENS" in lines[0] and "SAMPLED TOKENS" in lines[0] and "STORAGE BYTES" in lines[0]
    assert "alice" in lines[1] and "12,345" in lines[1] and "678" in lines[1] and "4,096" in lines[1]
    assert "bob" in lines[2] and secret not in table.output
    only = runner.invoke(main, ["admin", "usage", "--key", "alice", "--json", "--home", str(home)])
    rows = [json.loads(line) for line in only.output.splitlines()]
    assert len(rows) == 1 and rows[0]["train_tokens"] == 12345 and rows[0]["checkpoint_bytes"] == 4096
    assert rows[0]["name"] == "alice" and rows[0]["key_id"] == alice.id
    unknown = runner.invoke(main, ["admin", "usage", "--key", "nobody", "--home", str(home)])
    assert unknown.exit_code == 1 and "no key named" in unknown.output


def test_cli_subprocess_and_no_key_text_on_disk(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    created = _run(home, "key", "create", "ci", "--max-lora-rank", "8")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("tml-") and "only time the key is shown" in created.stderr
    listed = _run(home, "key", "list")
    assert listed.returncode == 0 and "ci" in listed.stdout and secret not in listed.stdout
    blob = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert secret.encode() not in blob and secret[4:].encode() not in blob
    assert hash_key(secret).encode() in blob
    revoked = _run(home, "key", "revoke", "ci")
    assert revoked.returncode == 0 and "Revoked" in revoked.stdout


def test_public_bind_without_keys_refuses_to_start(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-m", "tinker_server", "--host", "0.0.0.0", "--port", str(free_port()), "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "refusing to listen on 0.0.0.0" in proc.stderr
    assert "tinker-server admin key create NAME" in proc.stderr


def test_real_server_issued_mode_and_revocation(tmp_path: pathlib.Path) -> None:
    """A server process on loopback: open until a key exists; then only issued keys, and a
    key revoked by the CLI fails on its next request."""
    home = tmp_path / "home"
    with background_server(home, ["tinker-test/tiny-llama"]) as url:
        caps = f"{url}/api/v1/get_server_capabilities"
        assert httpx.get(caps, headers={"X-API-Key": "tml-local"}, timeout=30).status_code == 200
        created = _run(home, "key", "create", "team")
        assert created.returncode == 0, created.stderr
        secret = created.stdout.strip()
        assert httpx.get(caps, headers={"X-API-Key": secret}, timeout=30).status_code == 200
        refused = httpx.get(caps, headers={"X-API-Key": "tml-local"}, timeout=30)
        assert refused.status_code == 401 and "not one this server issued" in refused.json()["detail"]
        me = httpx.get(f"{url}/api/v1/auth/apikey/me", headers={"X-API-Key": secret}, timeout=30).json()
        assert me["name"] == "team"
        assert _run(home, "key", "revoke", "team").returncode == 0
        gone = httpx.get(caps, headers={"X-API-Key": secret}, timeout=30)
        assert gone.status_code == 401 and "revoked" in gone.json()["detail"]


def test_key_quota_replaces_the_limits(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    runner = CliRunner()
    created = runner.invoke(main, ["admin", "key", "create", "bob", "--max-lora-rank", "8", "--home", str(home)])
    assert created.exit_code == 0, created.output
    changed = runner.invoke(
        main,
        ["admin", "key", "quota", "bob", "--tokens-per-minute", "900", "--weight", "3", "--home", str(home)],
    )
    assert changed.exit_code == 0, changed.output
    assert "Key 'bob'" in changed.stdout
    store = KeyStore(Database(f"sqlite:///{home / 'tinker.db'}"))
    assert store.get("bob").quota == Quota(tokens_per_minute=900, weight=3.0)  # the rank limit is gone
    missing = runner.invoke(main, ["admin", "key", "quota", "nobody", "--home", str(home)])
    assert missing.exit_code != 0 and "no key named" in missing.output

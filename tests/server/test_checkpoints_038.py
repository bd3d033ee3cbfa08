"""Checkpoints as 0.38 clients use them: ttl and expiry, PUT …/ttl, overwrite,
per-checkpoint user_metadata, sampler kinds, external exports with signed per-file
URLs, and the start-up migration of an older database.

Request bodies are shaped as the 0.38 client sends them: every defaulted field
present, the ``type`` key included, nulls left out.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tinker_server.app import create_app
from tinker_server.archive import ArchiveSigner
from tinker_server.auth import owner_for_key
from tinker_server.db import CheckpointRow, add_missing_columns
from tinker_server.engine import TINY_MODEL
from tinker_server.settings import Settings

from .conftest import FAKE_MODEL, KEY, OTHER_KEY, Api, datum, fb_body

HOUR = 3600
TEN_YEARS = 10 * 365 * 24 * 3600


def body038(request_type: str, **fields: Any) -> dict[str, Any]:
    """A 0.38-style body: nulls dropped, ``type`` added."""
    return {**{k: v for k, v in fields.items() if v is not None}, "type": request_type}


def save_body(model_id: str, seq: int, name: str, **extra: Any) -> dict[str, Any]:
    return body038("save_weights", model_id=model_id, path=name, seq_id=seq, overwrite=False, **extra)


def sampler_body(model_id: str, seq: int, name: str | None = None, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"kind": "snapshot", **extra}
    return body038("save_weights_for_sampler", model_id=model_id, path=name, seq_id=seq, **fields)


def external_body(model_id: str, seq: int, name: str, **extra: Any) -> dict[str, Any]:
    return body038("save_weights_external", model_id=model_id, path=name, seq_id=seq, **extra)


def runtime_of(api: Api) -> Any:
    return api.runtime


def home_of(api: Api) -> pathlib.Path:
    return runtime_of(api).settings.home


def listing(api: Api, model_id: str, **headers: str) -> dict[str, dict[str, Any]]:
    response = api.get(f"training_runs/{model_id}/checkpoints", headers=headers)
    assert response.status_code == 200, response.text
    return {c["checkpoint_id"]: c for c in response.json()["checkpoints"]}


def put_ttl(api: Api, model_id: str, checkpoint_id: str, ttl: int | None) -> Any:
    return api.client.put(
        f"/api/v1/training_runs/{model_id}/checkpoints/{checkpoint_id}/ttl",
        json={"ttl_seconds": ttl},
        headers=api.headers,
    )


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def error_of(api: Api, path: str, body: dict[str, Any]) -> str:
    """The message of a failed future (400 at submit or a failed result)."""
    response = api.post(path, body)
    if response.status_code == 400:
        return response.json()["detail"]
    assert response.status_code == 200, response.text
    out = api.poll(response.json()["request_id"])
    assert "error" in out, out
    return out["error"]


@pytest.fixture
def run(api: Api) -> str:
    model_id = api.create_model(api.session())
    api.result("forward_backward", fb_body(model_id, 1))
    return model_id


# -- ttl, expiry, user_metadata -----------------------------------------------------------


def test_ttl_and_user_metadata_are_listed(api: Api, run: str) -> None:
    before = dt.datetime.now(dt.UTC)
    path = api.result("save_weights", save_body(run, 2, "w", ttl_seconds=2 * HOUR, user_metadata={"step": "2"}))["path"]
    assert path == f"tinker://{run}/weights/w"
    api.result("save_weights_for_sampler", sampler_body(run, 3, "s", ttl_seconds=HOUR))
    api.result("save_weights", save_body(run, 4, "plain"))
    ckpts = listing(api, run)
    w, s, plain = ckpts["weights/w"], ckpts["sampler_weights/s"], ckpts["weights/plain"]
    assert w["user_metadata"] == {"step": "2"}
    assert abs((parse_time(w["expires_at"]) - before).total_seconds() - 2 * HOUR) < 60
    assert abs((parse_time(s["expires_at"]) - before).total_seconds() - HOUR) < 60
    assert "user_metadata" not in s
    assert "expires_at" not in plain and "user_metadata" not in plain  # omitted, not null
    every = {c["checkpoint_id"]: c for c in api.get("checkpoints").json()["checkpoints"]}
    assert every["weights/w"]["expires_at"] == w["expires_at"]
    assert every["weights/w"]["user_metadata"] == {"step": "2"}
    last = api.get(f"training_runs/{run}").json()["last_sampler_checkpoint"]
    assert last["checkpoint_id"] == "sampler_weights/s" and last["expires_at"] == s["expires_at"]


def test_sweeper_deletes_expired_checkpoints(api: Api, run: str) -> None:
    api.result("save_weights", save_body(run, 2, "short", ttl_seconds=HOUR))
    api.result("save_weights", save_body(run, 3, "long", ttl_seconds=3 * HOUR))
    api.result("save_weights", save_body(run, 4, "forever"))
    folder = home_of(api) / "checkpoints" / run / "weights"
    assert {p.name for p in folder.iterdir()} == {"short", "long", "forever"}
    checkpoints = runtime_of(api).checkpoints
    assert checkpoints.delete_expired() == 0  # nothing is due yet
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    assert checkpoints.delete_expired(now=later) == 1
    assert set(listing(api, run)) == {"weights/long", "weights/forever"}
    assert {p.name for p in folder.iterdir()} == {"long", "forever"}  # no leftovers, no .deleted-*
    assert api.get(f"training_runs/{run}").json()["last_checkpoint"]["checkpoint_id"] == "weights/forever"


def test_expired_checkpoint_is_gone_before_the_sweep(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server(sweep_interval_s=0.2)
    model_id = api.create_model(api.session())
    path = api.result("save_weights", save_body(model_id, 1, "w", ttl_seconds=HOUR))["path"]
    api.result("save_weights_for_sampler", sampler_body(model_id, 2, "s", ttl_seconds=HOUR))
    runtime = runtime_of(api)
    with runtime.db.session() as s:  # let "w" expire now
        row = s.scalars(sa.select(CheckpointRow).where(CheckpointRow.checkpoint_id == "weights/w")).one()
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert set(listing(api, model_id)) == {"sampler_weights/s"}
    assert api.post("weights_info", {"tinker_path": path}).status_code == 404
    folder = home_of(api) / "checkpoints" / model_id / "weights" / "w"
    deadline = time.monotonic() + 10
    while folder.exists():  # the background sweeper (every 0.2 s) removes the folder
        assert time.monotonic() < deadline, "the sweeper did not delete the expired checkpoint"
        time.sleep(0.05)
    with runtime.db.session() as s:
        assert s.scalars(sa.select(CheckpointRow.checkpoint_id)).all() == ["sampler_weights/s"]
    # The name is free again, and a new save is a fresh checkpoint.
    api.result("save_weights", save_body(model_id, 3, "w"))
    assert "expires_at" not in listing(api, model_id)["weights/w"]


@pytest.mark.parametrize("ttl", [0, -5, HOUR - 1, TEN_YEARS + 1])
def test_ttl_bounds_on_save(api: Api, run: str, ttl: int) -> None:
    for path, body in (
        ("save_weights", save_body(run, 2, "w", ttl_seconds=ttl)),
        ("save_weights_for_sampler", sampler_body(run, 3, "s", ttl_seconds=ttl)),
        ("save_weights_external", external_body(run, 4, "e", ttl_seconds=ttl)),
    ):
        response = api.post(path, body)
        assert response.status_code == 400, (path, response.text)
        detail = response.json()["detail"]
        assert "ttl_seconds" in detail and "3600" in detail and "ten years" in detail
    assert listing(api, run) == {}
    # The refused submits used their seq_ids up: the next one runs at once.
    api.result("save_weights", save_body(run, 5, "w", ttl_seconds=TEN_YEARS))
    assert "expires_at" in listing(api, run)["weights/w"]


def test_put_ttl_sets_and_clears(api: Api, run: str) -> None:
    api.result("save_weights", save_body(run, 2, "w"))
    assert "expires_at" not in listing(api, run)["weights/w"]
    before = dt.datetime.now(dt.UTC)
    response = put_ttl(api, run, "weights/w", 5 * HOUR)
    assert response.status_code == 200, response.text
    assert response.json()["checkpoint_id"] == "weights/w"
    expires = parse_time(listing(api, run)["weights/w"]["expires_at"])
    assert abs((expires - before).total_seconds() - 5 * HOUR) < 60
    assert put_ttl(api, run, "weights/w", None).status_code == 200
    assert "expires_at" not in listing(api, run)["weights/w"]
    # A ttl set when saving can be removed too.
    api.result("save_weights_for_sampler", sampler_body(run, 3, "s", ttl_seconds=HOUR))
    assert put_ttl(api, run, "sampler_weights/s", None).status_code == 200
    assert "expires_at" not in listing(api, run)["sampler_weights/s"]


def test_put_ttl_errors(api: Api, run: str) -> None:
    api.result("save_weights", save_body(run, 2, "w"))
    api.result("save_weights", save_body(run, 3, "ttl"))  # a checkpoint literally named "ttl"
    for bad in (0, HOUR - 1, TEN_YEARS + 1, -1):
        response = put_ttl(api, run, "weights/w", bad)
        assert response.status_code == 400 and "ttl_seconds" in response.json()["detail"]
    assert put_ttl(api, run, "weights/missing", HOUR).status_code == 404
    assert put_ttl(api, "nope:train:0", "weights/w", HOUR).status_code == 404
    assert put_ttl(api.as_key(OTHER_KEY), run, "weights/w", HOUR).status_code == 404
    assert put_ttl(api, run, "bogus/w", HOUR).status_code == 400
    assert put_ttl(api.as_key(None), run, "weights/w", HOUR).status_code == 401
    assert put_ttl(api, run, "weights/ttl", HOUR).status_code == 200
    assert "expires_at" in listing(api, run)["weights/ttl"]
    assert "expires_at" not in listing(api, run)["weights/w"]


# -- overwrite ----------------------------------------------------------------------------


def test_overwrite_false_refuses_an_existing_name(api: Api, run: str) -> None:
    api.result("save_weights", save_body(run, 2, "w", user_metadata={"v": "1"}))
    response = api.post("save_weights", save_body(run, 3, "w"))
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert f"tinker://{run}/weights/w" in detail and "overwrite=True" in detail
    assert listing(api, run)["weights/w"]["user_metadata"] == {"v": "1"}
    # The refused seq_id is used up; the next one goes through.
    api.result("save_weights", save_body(run, 4, "other"))


def test_overwrite_true_replaces_checkpoint_metadata_and_ttl(api: Api, run: str) -> None:
    api.result("save_weights", save_body(run, 2, "w", user_metadata={"v": "1"}, ttl_seconds=HOUR))
    first = listing(api, run)["weights/w"]
    assert "expires_at" in first
    api.result("forward_backward", fb_body(run, 3))
    api.result("save_weights", {**save_body(run, 4, "w", user_metadata={"v": "2"}), "overwrite": True})
    second = listing(api, run)["weights/w"]
    assert second["user_metadata"] == {"v": "2"}
    assert "expires_at" not in second  # the new save had no ttl
    assert parse_time(second["time"]) >= parse_time(first["time"])
    api.result("save_weights", {**save_body(run, 5, "w"), "overwrite": True})
    assert "user_metadata" not in listing(api, run)["weights/w"]


def test_overwrite_absent_keeps_the_051_behaviour(api: Api, run: str) -> None:
    for seq in (2, 3):  # the 0.5.1 body: no overwrite, no type
        api.result("save_weights", {"model_id": run, "path": "w", "seq_id": seq})
    assert list(listing(api, run)) == ["weights/w"]


def test_overwrite_false_is_rechecked_when_the_save_runs(api: Api, run: str, fake_engines: dict) -> None:
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()  # hold the worker so both saves are queued before either runs
    try:
        first = api.ok("save_weights", save_body(run, 2, "w"))["request_id"]
        second = api.ok("save_weights", save_body(run, 3, "w"))["request_id"]
    finally:
        engine.gate.set()
    assert "error" not in api.poll(first)
    failed = api.poll(second)
    assert failed["category"] == "user" and "already exists" in failed["error"]


# -- sampler kinds ------------------------------------------------------------------------


def test_sampler_kinds(api: Api, run: str) -> None:
    named = api.result("save_weights_for_sampler", sampler_body(run, 2, "s", kind="inflight"))
    assert named == {"path": f"tinker://{run}/sampler_weights/s", "type": "save_weights_for_sampler"}
    ephemeral = api.result(
        "save_weights_for_sampler",
        body038("save_weights_for_sampler", model_id=run, seq_id=3, sampling_session_seq_id=0, kind="inflight"),
    )
    assert ephemeral["path"] is None and ephemeral["sampling_session_id"].endswith(":sample:0")
    sample = {
        "num_samples": 1,
        "prompt": {"chunks": [{"tokens": [1, 2, 3], "type": "encoded_text"}]},
        "sampling_params": {"max_tokens": 2, "temperature": 1.0, "top_k": -1, "top_p": 1.0},
        "sampling_session_id": ephemeral["sampling_session_id"],
        "seq_id": 0,
        "prompt_logprobs": False,
        "type": "sample",
    }
    assert len(api.result("asample", sample)["sequences"]) == 1
    response = api.post("save_weights_for_sampler", sampler_body(run, 4, "t", kind="streaming"))
    assert response.status_code == 400
    assert "kind" in response.json()["detail"] and "streaming" in response.json()["detail"]
    api.result("save_weights_for_sampler", sampler_body(run, 5, "t"))  # seq_id 4 was used up


# -- external exports ---------------------------------------------------------------------


def _urls(api: Api, model_id: str, name: str) -> dict[str, Any]:
    response = api.get(f"training_runs/{model_id}/checkpoints/external_weights/{name}/external_weights_urls")
    assert response.status_code == 200, response.text
    return response.json()


def _token(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _fetch(api: Api, url: str) -> Any:
    """GET a signed URL the way the client does: no API key."""
    return api.client.get(url)


def test_external_export_listing_and_signed_files(api: Api, run: str) -> None:
    before = dt.datetime.now(dt.UTC)
    result = api.result("save_weights_external", external_body(run, 2, "download", ttl_seconds=HOUR))
    folder = home_of(api) / "checkpoints" / run / "external_weights" / "download"
    on_disk = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert result == {
        "path": f"tinker://{run}/external_weights/download",
        "size_bytes": sum(len(b) for b in on_disk.values()),
        "type": "save_weights_external",
    }
    assert "optimizer" not in json.dumps(sorted(on_disk))  # weights only
    entry = listing(api, run)["external_weights/download"]
    assert entry["checkpoint_type"] == "external" and entry["tinker_path"] == result["path"]
    assert "expires_at" in entry
    # Clients before 0.28 cannot parse the "external" type: their listings leave it out.
    assert "external_weights/download" not in listing(api, run, **{"X-Stainless-Package-Version": "0.5.1"})
    assert "external_weights/download" in listing(api, run, **{"X-Stainless-Package-Version": "0.38.0"})
    old = api.get("checkpoints", headers={"X-Stainless-Package-Version": "0.5.1"}).json()
    assert old["checkpoints"] == [] and old["cursor"]["total_count"] == 0

    answer = _urls(api, run, "download")
    assert set(answer["urls"]) == set(on_disk)
    expires = parse_time(answer["expires"])
    assert before + dt.timedelta(minutes=10) < expires < before + dt.timedelta(minutes=20)
    for name, url in answer["urls"].items():
        assert url.startswith("http://testserver/api/v1/external_files/")
        response = _fetch(api, url)
        assert response.status_code == 200, response.text
        assert response.content == on_disk[name]
    # Downloading another tenant's export's URLs is refused like a missing one.
    other = api.as_key(OTHER_KEY)
    assert (
        other.get(f"training_runs/{run}/checkpoints/external_weights/download/external_weights_urls").status_code == 404
    )
    # Only external exports have per-file URLs.
    api.result("save_weights", save_body(run, 3, "w"))
    response = api.get(f"training_runs/{run}/checkpoints/weights/w/external_weights_urls")
    assert response.status_code == 400 and "external_weights" in response.json()["detail"]
    assert api.get(f"training_runs/{run}/checkpoints/external_weights/nope/external_weights_urls").status_code == 404

    # Deleted like any checkpoint; its URLs then answer 404.
    assert api.delete(f"training_runs/{run}/checkpoints/external_weights/download").status_code == 200
    assert not folder.exists()
    assert _fetch(api, next(iter(answer["urls"].values()))).status_code == 404


def test_external_file_links_refuse_tampering(api: Api, run: str) -> None:
    api.result("save_weights_external", external_body(run, 2, "e"))
    url = next(iter(_urls(api, run, "e")["urls"].values()))
    base, token = url.rsplit("/", 1)
    payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["c"] == "external_weights/e" and claims["r"] == run

    def forge(**changes: Any) -> str:
        data = base64.urlsafe_b64encode(json.dumps({**claims, **changes}).encode()).decode().rstrip("=")
        return f"{base}/{data}.{signature}"

    for bad in (forge(f="../../weights/w/adapter_model.json"), forge(e=claims["e"] + 3600), url[:-3] + "AAA"):
        assert _fetch(api, bad).status_code == 403
    signer = ArchiveSigner(home_of(api) / "archive_secret")
    content = (claims["k"], claims["t"])  # links name the export's exact content (archive.py)
    expired, _ = signer.sign(run, "external_weights/e", -5, file=claims["f"], content=content)
    response = _fetch(api, f"{base}/{expired}")
    assert response.status_code == 403 and "expired" in response.json()["detail"]
    # Even a correctly signed path may not leave the export's folder.
    api.result("save_weights", save_body(run, 3, "w"))
    escape, _ = signer.sign(run, "external_weights/e", 600, file="../../weights/w/adapter_model.json", content=content)
    assert _fetch(api, f"{base}/{escape}").status_code == 403
    missing, _ = signer.sign(run, "external_weights/e", 600, file="nothing.bin", content=content)
    assert _fetch(api, f"{base}/{missing}").status_code == 404
    # Archive tokens and file tokens are not interchangeable.
    archive_token, _ = signer.sign(run, "external_weights/e", 600, content=content)
    assert _fetch(api, f"{base}/{archive_token}").status_code == 403
    assert _fetch(api, f"http://testserver/api/v1/archives/{_token(url)}").status_code == 403
    # The archive route still serves external exports as a tar.
    archive = api.get(f"training_runs/{run}/checkpoints/external_weights/e/archive", follow_redirects=False)
    assert archive.status_code == 302


def test_external_export_options(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server(public_base_url="https://tinker.example.org/")
    run = api.create_model(api.session())
    response = api.post("save_weights_external", external_body(run, 1, "e", age_encryption_recipients=["age1qqq"]))
    assert response.status_code == 400 and "encrypt" in response.json()["detail"]
    assert api.post("save_weights_external", external_body(run, 2, "bad/name")).status_code == 400
    api.result("save_weights_external", external_body(run, 3, "e", age_encryption_recipients=[]))
    urls = _urls(api, run, "e")["urls"]
    assert all(u.startswith("https://tinker.example.org/api/v1/external_files/") for u in urls.values())
    # Saving the same name again replaces the export (the CLI reuses "download").
    api.result("save_weights_external", external_body(run, 4, "e"))
    assert list(listing(api, run)) == ["external_weights/e"]
    # PUT ttl works on exports too.
    assert put_ttl(api, run, "external_weights/e", HOUR).status_code == 200
    assert "expires_at" in listing(api, run)["external_weights/e"]
    assert api.post("save_weights_external", external_body("nope:train:0", 5, "e")).status_code == 404


# -- migration ----------------------------------------------------------------------------

# The tables as the 0.5.1-era server created them (before expiry, user_metadata, sessions'
# display_name/project_id/finish and runs' optimizer_config existed).
OLD_SCHEMA = """
CREATE TABLE sessions (
    id VARCHAR(64) NOT NULL PRIMARY KEY, owner VARCHAR(64) NOT NULL, tags JSON NOT NULL,
    user_metadata JSON, sdk_version VARCHAR(64) NOT NULL, created_at DATETIME NOT NULL,
    last_heartbeat DATETIME NOT NULL, expired BOOLEAN NOT NULL);
CREATE INDEX ix_sessions_owner ON sessions (owner);
CREATE TABLE training_runs (
    id VARCHAR(128) NOT NULL PRIMARY KEY, owner VARCHAR(64) NOT NULL, session_id VARCHAR(64) NOT NULL,
    model_seq_id INTEGER NOT NULL, base_model VARCHAR(256) NOT NULL, lora_rank INTEGER NOT NULL,
    lora_config JSON NOT NULL, user_metadata JSON, created_at DATETIME NOT NULL,
    last_request_time DATETIME NOT NULL, corrupted BOOLEAN NOT NULL, last_seq_id INTEGER NOT NULL,
    unloaded_reason TEXT);
CREATE TABLE checkpoints (
    pk INTEGER NOT NULL PRIMARY KEY, run_id VARCHAR(128) NOT NULL, owner VARCHAR(64) NOT NULL,
    checkpoint_id VARCHAR(300) NOT NULL, checkpoint_type VARCHAR(16) NOT NULL, time DATETIME NOT NULL,
    tinker_path TEXT NOT NULL, size_bytes BIGINT, public BOOLEAN NOT NULL, UNIQUE (run_id, checkpoint_id));
CREATE INDEX ix_checkpoints_run_id ON checkpoints (run_id);
"""


def test_migration_from_an_old_database(make_fake_server: Callable[..., Api], tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    me = owner_for_key(KEY)
    run_id = "old-session:train:0"
    with sqlite3.connect(home / "tinker.db") as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute(
            "INSERT INTO sessions VALUES ('old-session', ?, '[]', NULL, '0.5.1', "
            "'2025-01-01 00:00:00.000000', '2025-01-01 00:00:00.000000', 1)",
            (me,),
        )
        conn.execute(
            "INSERT INTO training_runs VALUES (?, ?, 'old-session', 0, ?, 8, '{\"rank\": 8}', NULL, "
            "'2025-01-01 00:00:00.000000', '2025-01-01 00:00:00.000000', 0, 2, NULL)",
            (run_id, me, FAKE_MODEL),
        )
        conn.execute(
            "INSERT INTO checkpoints "
            "(run_id, owner, checkpoint_id, checkpoint_type, time, tinker_path, size_bytes, public) "
            "VALUES (?, ?, 'weights/old', 'training', '2025-01-01 00:01:00.000000', ?, 10, 0)",
            (run_id, me, f"tinker://{run_id}/weights/old"),
        )
    folder = home / "checkpoints" / run_id / "weights" / "old"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.json").write_text('{"w": 0.5, "steps": 0}')

    api = make_fake_server()
    old = listing(api, run_id)["weights/old"]
    assert old["tinker_path"] == f"tinker://{run_id}/weights/old"
    assert "expires_at" not in old and "user_metadata" not in old
    assert put_ttl(api, run_id, "weights/old", HOUR).status_code == 200
    assert "expires_at" in listing(api, run_id)["weights/old"]
    run = api.get(f"training_runs/{run_id}").json()
    assert run["last_checkpoint"]["checkpoint_id"] == "weights/old"
    engine = runtime_of(api).db.engine
    columns = {c["name"] for c in sa.inspect(engine).get_columns("checkpoints")}
    assert {"expires_at", "user_metadata"} <= columns
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("checkpoints")}
    assert "ix_checkpoints_expires_at" in indexes
    # The old run resumes from its checkpoint into a new run, which saves with the new fields.
    sid = api.session()
    new_run = api.create_model(sid)
    api.result("load_weights", {"model_id": new_run, "path": f"tinker://{run_id}/weights/old", "seq_id": 1})
    api.result("save_weights", save_body(new_run, 2, "w", user_metadata={"from": "old"}))
    assert listing(api, new_run)["weights/w"]["user_metadata"] == {"from": "old"}
    # A second start finds nothing to add.
    assert add_missing_columns(engine, CheckpointRow.metadata) == []


def test_migration_refuses_a_not_null_column_without_default(tmp_path: pathlib.Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    old = sa.MetaData()
    sa.Table("t", old, sa.Column("id", sa.Integer, primary_key=True))
    old.create_all(engine)
    new = sa.MetaData()
    sa.Table(
        "t",
        new,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("count", sa.Integer, nullable=False, default=7),
        sa.Column("must", sa.Text, nullable=False),
    )
    with pytest.raises(RuntimeError, match=r"t.must"):
        add_missing_columns(engine, new)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t (id) VALUES (1)")
        assert conn.exec_driver_sql("SELECT note, count FROM t").all() == [(None, 7)]
    engine.dispose()


# -- the real engine: an export loads with stock PEFT -------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("tiny-038")
    client = TestClient(create_app(Settings(home=home, models=[TINY_MODEL], long_poll_s=1.0)))
    with client:
        yield Api(client)


# peft 0.21 reads a transformers attribute that transformers 5 deprecates (third-party warning).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_external_export_loads_with_stock_peft(tiny: Api, tmp_path: pathlib.Path) -> None:
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from tinker_server.engine.tiny import build_tiny_model

    body = {
        "session_id": tiny.session(),
        "model_seq_id": 0,
        "base_model": TINY_MODEL,
        "lora_config": {"rank": 4, "seed": 8, "train_unembed": True, "train_mlp": True, "train_attn": True},
        "type": "create_model",
    }
    model_id = tiny.result("create_model", body)["model_id"]
    prompt = [5, 17, 42, 99, 7, 3, 250, 11, 400]
    data = [datum(prompt, [*prompt[1:], 2])]
    seq = 0
    for _ in range(3):  # B != 0 afterwards, so the adapter changes the logits
        seq += 1
        tiny.result("forward_backward", fb_body(model_id, seq, data))
        seq += 1
        tiny.result("optim_step", {"adam_params": {"learning_rate": 0.05}, "model_id": model_id, "seq_id": seq})
    seq += 1
    forward = {"forward_input": {"data": data, "loss_fn": "cross_entropy"}, "model_id": model_id, "seq_id": seq}
    ours = np.asarray(tiny.result("forward", forward)["loss_fn_outputs"][0]["logprobs"]["data"])
    seq += 1
    export = tiny.result("save_weights_external", external_body(model_id, seq, "hf", ttl_seconds=HOUR))
    assert export["path"] == f"tinker://{model_id}/external_weights/hf"

    urls = _urls(tiny, model_id, "hf")["urls"]
    assert set(urls) == {"adapter_config.json", "adapter_model.safetensors"}
    folder = tiny.runtime.settings.checkpoints_dir / model_id / "external_weights" / "hf"
    target = tmp_path / "adapter"
    target.mkdir()
    for name, url in urls.items():
        response = _fetch(tiny, url)
        assert response.status_code == 200
        assert response.content == (folder / name).read_bytes()
        (target / name).write_bytes(response.content)
    assert export["size_bytes"] == sum(p.stat().st_size for p in target.iterdir())

    base = build_tiny_model()
    ids = torch.tensor([prompt])
    targets = torch.tensor([*prompt[1:], 2])[:, None]
    with torch.no_grad():
        plain = torch.log_softmax(base(ids).logits[0].float(), -1).gather(1, targets)[:, 0].numpy()
        model = peft.PeftModel.from_pretrained(base, str(target))
        model.eval()
        theirs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1).gather(1, targets)[:, 0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.max(np.abs(plain - theirs)) > 1e-3  # the adapter mattered

"""The calls 0.18+ clients make before and around training (bodies as 0.38 sends them:
every defaulted field present with its ``type`` discriminator, nulls left out)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from .conftest import FAKE_MODEL, Api, fb_body
from .fake_engine import FakeEngine

LORA = {"rank": 8, "train_unembed": True, "train_mlp": True, "train_attn": True}


def _session(api: Api, **extra: object) -> str:
    body = {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0", "type": "create_session", **extra}
    return api.ok("create_session", body)["session_id"]


def _create(api: Api, sid: str, seq: int = 0, **extra: object) -> httpx.Response:
    body = {
        "session_id": sid,
        "model_seq_id": seq,
        "base_model": FAKE_MODEL,
        "lora_config": LORA,
        "optimizer_config": {"type": "adamw"},
        "type": "create_model",
        **extra,
    }
    return api.post("create_model", body)


def test_client_config_switches_on_what_the_server_supports(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server(client_config={"fwdbwd_max_chunk_len": 2})
    config = api.ok("client/config", {"sdk_version": "0.38.0"})
    assert config["parallel_fwdbwd_chunks"] is True
    assert config["pjwt_auth_enabled"] is False
    assert config["fwdbwd_max_chunk_len"] == 2  # the operator's override
    # 0.19-0.24 clients read these to use the protobuf path and session-addressed loads.
    assert config["proto_write_fwdbwd"] and config["fwd_via_fwdbwd"] and config["create_model_via_load_weights"]
    dynamic = api.ok("client/dynamic_config", {"sdk_version": "0.38.0"})
    assert dynamic["refresh_interval_sec"] >= 10
    assert api.as_key(None).post("client/config", {"sdk_version": "0.38.0"}).status_code == 401


def test_session_fields_finish_and_heartbeat_after_it(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    sid = _session(api, display_name="my run", project_id="p1", user_metadata={"u": "1"})
    assert api.get(f"sessions/{sid}", params={"access_scope": "owned"}).json() == {
        "training_run_ids": [],
        "sampler_ids": [],
        "display_name": "my run",
        "user_metadata": {"u": "1"},
    }
    model_id = api.poll(_create(api, sid).json()["request_id"])["model_id"]
    assert api.ok("session_heartbeat", {"session_id": sid, "type": "session_heartbeat"}) == {
        "type": "session_heartbeat"
    }
    finish = {"reason": {"type": "success"}, "detail": None}
    assert api.post(f"sessions/{sid}/finish", finish).status_code == 200
    assert api.post(f"sessions/{sid}/finish", {"reason": {"type": "errored"}}).status_code == 200  # idempotent
    gone = api.post("session_heartbeat", {"session_id": sid, "type": "session_heartbeat"})
    assert gone.status_code == 410 and "finished" in gone.json()["detail"]
    # Its adapters left memory; the run says how to come back.
    late = api.post("forward_backward", fb_body(model_id, 1))
    assert late.status_code == 410 and "finished by the client" in late.json()["detail"]
    assert _create(api, sid, seq=1).status_code == 410
    assert api.as_key("tml-other").post(f"sessions/{sid}/finish", finish).status_code == 404


def test_api_key_me_names_the_tenant(api: Api) -> None:
    me = api.get("auth/apikey/me").json()
    assert isinstance(me["key_id"], int) and me["name"].startswith("user-")
    assert api.as_key("tml-other").get("auth/apikey/me").json()["key_id"] != me["key_id"]


def test_optimizer_config(api: Api) -> None:
    sid = _session(api)
    model_id = api.poll(_create(api, sid).json()["request_id"])["model_id"]
    assert api.ok("get_info", {"model_id": model_id, "type": "get_info"})["optimizer_config"] == {"type": "adamw"}
    dimuon = _create(api, sid, seq=1, optimizer_config={"type": "dimuon", "version": 1})
    assert dimuon.status_code == 400 and "dimuon" in dimuon.json()["detail"]
    step = api.post(
        "optim_step",
        {
            "model_id": model_id,
            "seq_id": 1,
            "optimizer_params": {"type": "dimuon", "learning_rate": 0.1, "grad_clip_norm": 0, "beta1": 0.9},
            "type": "optim_step",
        },
    )
    assert step.status_code == 400 and "AdamParams" in step.json()["detail"]
    six = {"learning_rate": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0, "grad_clip_norm": 0.0}
    assert "error" not in api.result(
        "optim_step", {"model_id": model_id, "seq_id": 1, "adam_params": six, "type": "optim_step"}
    )


def test_session_addressed_load_weights_creates_the_run(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    sid = _session(api)
    model_id = api.poll(_create(api, sid).json()["request_id"])["model_id"]
    api.result("forward_backward", fb_body(model_id, 1))
    api.result("optim_step", {"model_id": model_id, "seq_id": 2, "adam_params": {"learning_rate": 0.5}})
    path = api.result("save_weights", {"model_id": model_id, "path": "c1", "seq_id": 3, "type": "save_weights"})["path"]

    other = _session(api)
    for seq, optimizer in ((1, False), (2, True)):
        body = {"session_id": other, "model_seq_id": seq, "path": path, "optimizer": optimizer, "type": "load_weights"}
        fut = api.ok("load_weights", body)
        assert fut["model_id"] == f"{other}:train:{seq}"  # the id the 0.38 client computes itself
        assert api.ok("load_weights", body)["request_id"] == fut["request_id"]  # a retry is the same request
        assert api.poll(fut["request_id"])["model_id"] == fut["model_id"]
        info = api.ok("get_info", {"model_id": fut["model_id"], "type": "get_info"})
        assert info["lora_rank"] == 8 and info["model_data"]["model_name"] == FAKE_MODEL
    engine = fake_engines[FAKE_MODEL]
    assert engine.adapters[f"{other}:train:1"]["w"] == engine.adapters[model_id]["w"] != 0.0
    assert engine.adapters[f"{other}:train:1"]["steps"] == 0
    assert engine.adapters[f"{other}:train:2"]["steps"] == engine.adapters[model_id]["steps"] == 1
    # Training the loaded run goes on from seq_id 1.
    assert api.result("forward_backward", fb_body(f"{other}:train:2", 1))["metrics"]["loss:sum"] > 0

    wrong = {"session_id": other, "model_seq_id": 3, "path": path, "base_model": "fake/model-b", "type": "load_weights"}
    assert "cannot be loaded onto" in api.post("load_weights", wrong).json()["detail"]
    nobody = {"session_id": other, "model_seq_id": 3, "path": path}
    assert api.as_key("tml-other").post("load_weights", nobody).status_code == 404
    assert "model_id" in api.post("load_weights", {"path": path, "optimizer": False}).json()["detail"]


def test_unknown_keys_and_query_parameters_are_ignored(api: Api) -> None:
    sid = _session(api, some_future_field={"x": 1})
    assert api.get("training_runs", params={"access_scope": "owned", "project_id": "p"}).status_code == 200
    fut = _create(api, sid, not_a_field=True)
    assert fut.status_code == 200 and api.poll(fut.json()["request_id"])["model_id"] == f"{sid}:train:0"

"""Tenant isolation, endpoint by endpoint: with issued keys, another tenant's session, run,
sampler, request, private checkpoint and signed link answer exactly like missing ones
(404); a revoked key gets 401 everywhere; published checkpoints are readable by all."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from tinker_server.auth import KeyStore
from tinker_server.db import Database

from .conftest import FAKE_MODEL, Api, fb_body


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> KeyStore:
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite:///{home / 'tinker.db'}")
    db.create_tables()
    return KeyStore(db)


def _owned_world(alice: Api) -> dict[str, Any]:
    """Everything one tenant makes: a session, a run, checkpoints, a sampler, requests, a link."""
    sid = alice.session()
    model_id = alice.create_model(sid)
    fut = alice.ok("forward_backward", fb_body(model_id, 1))
    alice.poll(fut["request_id"])
    weights = alice.result("save_weights", {"model_id": model_id, "path": "w", "seq_id": 2})["path"]
    sampler_path = alice.result("save_weights_for_sampler", {"model_id": model_id, "path": "s", "seq_id": 3})["path"]
    sampler = alice.ok(
        "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0, "model_path": sampler_path}
    )["sampling_session_id"]
    sample = alice.ok(
        "asample",
        {
            "sampling_session_id": sampler,
            "num_samples": 1,
            "seq_id": 0,
            "prompt": {"chunks": [{"tokens": [1, 2]}]},
            "sampling_params": {"max_tokens": 1},
        },
    )
    archive = alice.get(f"training_runs/{model_id}/checkpoints/weights/w/archive", follow_redirects=False)
    assert archive.status_code in (200, 302, 307), archive.text
    return {
        "sid": sid,
        "model_id": model_id,
        "weights": weights,
        "sampler_path": sampler_path,
        "sampler": sampler,
        "request_id": fut["request_id"],
        "sample_id": sample["request_id"],
    }


def _probes(w: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(method, path, body) for every endpoint that takes one of the owner's ids."""
    m, ckpt = w["model_id"], f"training_runs/{w['model_id']}/checkpoints/weights/w"
    sample_body = {
        "sampling_session_id": w["sampler"],
        "num_samples": 1,
        "seq_id": 1,
        "prompt": {"chunks": [{"tokens": [1]}]},
        "sampling_params": {"max_tokens": 1},
    }
    return [
        ("get", f"sessions/{w['sid']}", None),
        ("post", "session_heartbeat", {"session_id": w["sid"]}),
        ("post", f"sessions/{w['sid']}/finish", {}),
        (
            "post",
            "create_model",
            {"session_id": w["sid"], "model_seq_id": 5, "base_model": FAKE_MODEL, "lora_config": {"rank": 4}},
        ),
        (
            "post",
            "create_sampling_session",
            {"session_id": w["sid"], "sampling_session_seq_id": 7, "base_model": FAKE_MODEL},
        ),
        ("post", "get_info", {"model_id": m}),
        ("post", "forward_backward", fb_body(m, 9)),
        ("post", "forward", {"model_id": m, "seq_id": 9, "forward_input": fb_body(m, 9)["forward_backward_input"]}),
        ("post", "optim_step", {"model_id": m, "seq_id": 9, "adam_params": {"learning_rate": 1e-3}}),
        ("post", "save_weights", {"model_id": m, "path": "x", "seq_id": 9}),
        ("post", "save_weights_for_sampler", {"model_id": m, "path": "x", "seq_id": 9}),
        ("post", "load_weights", {"model_id": m, "path": w["weights"], "seq_id": 9}),
        ("post", "unload_model", {"model_id": m}),
        ("post", "weights_info", {"tinker_path": w["weights"]}),
        ("get", f"training_runs/{m}", None),
        ("get", f"training_runs/{m}/checkpoints", None),
        ("get", f"{ckpt}/archive", None),
        ("get", f"training_runs/{m}/checkpoints/external_weights/e/external_weights_urls", None),
        ("put", f"{ckpt}/ttl", {"ttl_seconds": 7200}),
        ("post", f"{ckpt}/publish", None),
        ("delete", f"{ckpt}/publish", None),
        ("delete", ckpt, None),
        ("get", f"samplers/{w['sampler']}", None),
        ("post", "asample", sample_body),
        ("post", "retrieve_future", {"request_id": w["request_id"]}),
        ("post", "retrieve_futures", {"target": {"sampling_session_id": w["sampler"]}}),
        ("post", "cancel_future", {"request_id": w["sample_id"]}),
        (
            "post",
            "create_sampling_session",
            {"session_id": "x", "sampling_session_seq_id": 0, "model_path": w["sampler_path"]},
        ),
        ("get", f"console/runs/{m}", None),
        ("get", f"console/runs/{m}/metrics?kind=train&name=loss", None),
    ]


def _call(api: Api, method: str, path: str, body: Any) -> Any:
    if method == "get":
        return api.get(path, follow_redirects=False)
    if method == "delete":
        return api.delete(path)
    if method == "put":
        return api.client.put(f"/api/v1/{path}", json=body, headers=api.headers)
    return api.post(path, body)


def test_every_id_taking_endpoint_hides_other_tenants_things(
    make_fake_server: Callable[..., Api], keys: KeyStore
) -> None:
    alice_key, bob_key, carol_key = (keys.create(name).secret for name in ("alice", "bob", "carol"))
    server = make_fake_server()
    alice, bob, carol = server.as_key(alice_key), server.as_key(bob_key), server.as_key(carol_key)
    world = _owned_world(alice)
    bob.session()  # bob is a tenant with things of his own
    keys.revoke("carol")
    leaks = []
    for method, path, body in _probes(world):
        answer = _call(bob, method, path, body)
        if answer.status_code != 404:
            leaks.append((method, path, answer.status_code, answer.text[:200]))
        assert _call(carol, method, path, body).status_code == 401, (method, path)
    assert leaks == [], "\n".join(map(str, leaks))
    # Nothing of alice's changed: her run still trains, her checkpoint is still private and hers.
    assert alice.result("forward_backward", fb_body(world["model_id"], 4))["metrics"]
    listed = alice.get(f"training_runs/{world['model_id']}/checkpoints").json()["checkpoints"]
    assert {c["tinker_path"] for c in listed} >= {world["weights"], world["sampler_path"]}
    assert all(not c.get("public") for c in listed)


def test_published_checkpoints_are_readable_by_all_tenants(
    make_fake_server: Callable[..., Api], keys: KeyStore
) -> None:
    alice_key, bob_key = (keys.create(name).secret for name in ("alice", "bob"))
    server = make_fake_server()
    alice, bob = server.as_key(alice_key), server.as_key(bob_key)
    world = _owned_world(alice)
    path = f"training_runs/{world['model_id']}/checkpoints/sampler_weights/s"
    assert alice.post(f"{path}/publish").status_code == 200
    assert bob.post("weights_info", {"tinker_path": world["sampler_path"]}).status_code == 200
    sampler = bob.ok(
        "create_sampling_session",
        {"session_id": bob.session(), "sampling_session_seq_id": 0, "model_path": world["sampler_path"]},
    )["sampling_session_id"]
    body = {
        "sampling_session_id": sampler,
        "num_samples": 1,
        "seq_id": 0,
        "prompt": {"chunks": [{"tokens": [1]}]},
        "sampling_params": {"max_tokens": 1},
    }
    assert bob.result("asample", body)["sequences"]
    # Only the owner manages it.
    assert bob.delete(f"{path}/publish").status_code == 404
    assert bob.delete(path).status_code == 404

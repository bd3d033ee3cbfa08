"""Runs, checkpoints, sessions, samplers, archives: the REST surface (fake engine)."""

from __future__ import annotations

import io
import pathlib
import tarfile
import time
from collections.abc import Callable

import httpx
import pytest

from tinker_server.archive import ArchiveSigner

from .conftest import FAKE_MODEL, OTHER_KEY, Api, fb_body


def _save(api: Api, model_id: str, seq: int, name: str, kind: str = "save_weights") -> str:
    return api.result(kind, {"model_id": model_id, "path": name, "seq_id": seq})["path"]


@pytest.fixture
def trained(api: Api) -> tuple[str, str, list[str]]:
    """A session, a run with one step, and checkpoints w1, s1, w2 (saved in that order)."""
    sid = api.session()
    model_id = api.create_model(sid)
    api.result("forward_backward", fb_body(model_id, 1))
    api.result("optim_step", {"adam_params": {"learning_rate": 0.1}, "model_id": model_id, "seq_id": 2})
    paths = [
        _save(api, model_id, 3, "w1"),
        _save(api, model_id, 4, "s1", "save_weights_for_sampler"),
        _save(api, model_id, 5, "w2"),
    ]
    return sid, model_id, paths


def test_training_runs(api: Api, trained: tuple[str, str, list[str]]) -> None:
    sid, model_id, paths = trained
    second = api.create_model(sid, 1)
    listing = api.get("training_runs").json()
    assert listing["cursor"] == {"offset": 0, "limit": 20, "total_count": 2}
    assert [r["training_run_id"] for r in listing["training_runs"]] == [second, model_id]  # newest first
    run = api.get(f"training_runs/{model_id}").json()
    assert run["training_run_id"] == model_id
    assert run["base_model"] == FAKE_MODEL and run["is_lora"] is True and run["lora_rank"] == 8
    assert run["model_owner"].startswith("user-") and run["corrupted"] is False
    assert run["last_checkpoint"]["tinker_path"] == paths[2]
    assert run["last_sampler_checkpoint"]["tinker_path"] == paths[1]
    assert run["last_request_time"].endswith("Z")
    assert api.get("training_runs/nope:train:0").status_code == 404
    assert api.as_key(OTHER_KEY).get(f"training_runs/{model_id}").status_code == 404
    assert api.as_key(OTHER_KEY).get("training_runs").json()["training_runs"] == []


def test_pagination_edges(api: Api, trained: tuple[str, str, list[str]]) -> None:
    sid, _model_id, _paths = trained
    for i in range(1, 4):
        api.create_model(sid, i)
    page = api.get("training_runs", params={"limit": 2, "offset": 3}).json()
    assert len(page["training_runs"]) == 1
    assert page["cursor"] == {"offset": 3, "limit": 2, "total_count": 4}
    assert api.get("training_runs", params={"limit": 2, "offset": 10}).json()["training_runs"] == []
    for path in ("training_runs", "checkpoints", "sessions"):
        for params, word in (({"limit": 0}, "limit"), ({"limit": -3}, "limit"), ({"offset": -1}, "offset")):
            response = api.get(path, params=params)
            assert response.status_code == 400, (path, params)
            assert word in response.json()["detail"]
        assert api.get(path, params={"limit": "abc"}).status_code == 400
    ckpts = api.get("checkpoints", params={"limit": 2, "offset": 1}).json()
    assert [c["checkpoint_id"] for c in ckpts["checkpoints"]] == ["sampler_weights/s1", "weights/w1"]
    assert ckpts["cursor"] == {"offset": 1, "limit": 2, "total_count": 3}


def test_checkpoint_listing_and_delete(api: Api, trained: tuple[str, str, list[str]]) -> None:
    _sid, model_id, paths = trained
    listing = api.get(f"training_runs/{model_id}/checkpoints").json()
    assert listing.get("cursor") is None
    ids = [c["checkpoint_id"] for c in listing["checkpoints"]]
    assert ids == ["weights/w2", "sampler_weights/s1", "weights/w1"]
    first = listing["checkpoints"][-1]
    assert first["checkpoint_type"] == "training" and first["public"] is False and first["size_bytes"] > 0
    assert first["tinker_path"] == paths[0]
    user = api.get("checkpoints").json()
    assert [c["checkpoint_id"] for c in user["checkpoints"]] == ids
    assert user["cursor"]["total_count"] == 3

    assert api.delete(f"training_runs/{model_id}/checkpoints/weights/w1").status_code == 200
    again = api.delete(f"training_runs/{model_id}/checkpoints/weights/w1")
    assert again.status_code == 404 and "not found" in again.json()["detail"]
    assert api.as_key(OTHER_KEY).delete(f"training_runs/{model_id}/checkpoints/weights/w2").status_code == 404
    for bad in ("bogus/w2", "weights", "weights/%2E%2E", "weights/a/b"):
        assert api.delete(f"training_runs/{model_id}/checkpoints/{bad}").status_code in (400, 404), bad
    remaining = [c["checkpoint_id"] for c in api.get(f"training_runs/{model_id}/checkpoints").json()["checkpoints"]]
    assert remaining == ["weights/w2", "sampler_weights/s1"]
    # A checkpoint named like a sub-route still works.
    _save(api, model_id, 6, "publish")
    assert api.delete(f"training_runs/{model_id}/checkpoints/weights/publish").status_code == 200


def test_publish_and_public_access(api: Api, trained: tuple[str, str, list[str]]) -> None:
    _sid, model_id, paths = trained
    other = api.as_key(OTHER_KEY)
    w2 = paths[2]
    assert other.post("weights_info", {"tinker_path": w2}).status_code == 404
    assert other.post(f"training_runs/{model_id}/checkpoints/weights/w2/publish").status_code == 404
    assert api.post(f"training_runs/{model_id}/checkpoints/weights/w2/publish").status_code == 200
    again = api.post(f"training_runs/{model_id}/checkpoints/weights/w2/publish")
    assert again.status_code == 400 and "already public" in again.json()["detail"]
    assert api.get(f"training_runs/{model_id}/checkpoints").json()["checkpoints"][0]["public"] is True

    # Anyone can read a public checkpoint: weights info, the run, its public checkpoints, sampling.
    assert other.post("weights_info", {"tinker_path": w2}).json() == {
        "base_model": FAKE_MODEL,
        "is_lora": True,
        "lora_rank": 8,
    }
    assert other.get(f"training_runs/{model_id}").json()["training_run_id"] == model_id
    visible = other.get(f"training_runs/{model_id}/checkpoints").json()["checkpoints"]
    assert [c["checkpoint_id"] for c in visible] == ["weights/w2"]
    osid = other.session()
    sampler = other.ok(
        "create_sampling_session",
        {"session_id": osid, "sampling_session_seq_id": 0, "base_model": None, "model_path": w2},
    )["sampling_session_id"]
    assert other.get(f"samplers/{sampler}").json() == {
        "sampler_id": sampler,
        "base_model": FAKE_MODEL,
        "model_path": w2,
    }
    # ... and train from it (create_training_client_from_state: create_model + load_weights).
    other_run = other.create_model(osid, 0)
    loaded = other.result("load_weights", {"model_id": other_run, "path": w2, "optimizer": False, "seq_id": 1})
    assert loaded == {"path": w2, "type": "load_weights"}
    # ... but not change it.
    assert other.delete(f"training_runs/{model_id}/checkpoints/weights/w2").status_code == 404
    assert other.delete(f"training_runs/{model_id}/checkpoints/weights/w2/publish").status_code == 404

    assert api.delete(f"training_runs/{model_id}/checkpoints/weights/w2/publish").status_code == 200
    again = api.delete(f"training_runs/{model_id}/checkpoints/weights/w2/publish")
    assert again.status_code == 400 and "already private" in again.json()["detail"]
    assert other.post("weights_info", {"tinker_path": w2}).status_code == 404


def test_weights_info_errors(api: Api, trained: tuple[str, str, list[str]]) -> None:
    _sid, model_id, _paths = trained
    for bad in (
        "x",
        "tinker://",
        f"tinker://{model_id}/weights",
        f"tinker://{model_id}/other/x",
        f"tinker://{model_id}/weights/..",
        "tinker:///weights/x",
        f"tinker://{model_id}/weights/a/b",
    ):
        response = api.post("weights_info", {"tinker_path": bad})
        assert response.status_code == 400, bad
        assert "Invalid tinker path" in response.json()["detail"]
    assert api.post("weights_info", {"tinker_path": f"tinker://{model_id}/weights/none"}).status_code == 404


def test_load_weights(api: Api, trained: tuple[str, str, list[str]], fake_engines: dict) -> None:
    sid, model_id, paths = trained
    engine = fake_engines[FAKE_MODEL]
    trained_w = engine.adapters[model_id]["w"]
    fresh = api.create_model(sid, 1)
    # The PyPI 0.5.1 client sends no "optimizer" field.
    api.result("load_weights", {"model_id": fresh, "path": paths[0], "seq_id": 1})
    assert engine.adapters[fresh]["w"] == trained_w
    assert engine.adapters[fresh]["steps"] == 0
    api.result("load_weights", {"model_id": fresh, "path": paths[0], "optimizer": True, "seq_id": 2})
    assert engine.adapters[fresh]["steps"] == 1
    bad = api.post("load_weights", {"model_id": fresh, "path": paths[1], "optimizer": True, "seq_id": 3})
    assert bad.status_code == 400 and "no optimizer state" in bad.json()["detail"]
    wrong_rank = api.create_model(sid, 2, rank=4)
    bad = api.post("load_weights", {"model_id": wrong_rank, "path": paths[0], "optimizer": False, "seq_id": 1})
    assert bad.status_code == 400 and "rank" in bad.json()["detail"]
    other_base = api.create_model(sid, 3, base_model="fake/model-b")
    bad = api.post("load_weights", {"model_id": other_base, "path": paths[0], "optimizer": False, "seq_id": 1})
    assert bad.status_code == 400 and "trained on" in bad.json()["detail"]


def test_save_overwrites_existing_name(api: Api, trained: tuple[str, str, list[str]]) -> None:
    _sid, model_id, paths = trained
    before = api.get(f"training_runs/{model_id}/checkpoints").json()["checkpoints"]
    assert _save(api, model_id, 6, "w1") == paths[0]
    after = api.get(f"training_runs/{model_id}/checkpoints").json()["checkpoints"]
    assert len(after) == len(before)
    assert after[0]["checkpoint_id"] == "weights/w1"  # newest now


def _archive(api: Api, model_id: str, checkpoint_id: str) -> httpx.Response:
    return api.get(
        f"training_runs/{model_id}/checkpoints/{checkpoint_id}/archive",
        headers={"Accept": "application/gzip"},
        follow_redirects=False,
    )


def test_archive_redirect_and_download(api: Api, trained: tuple[str, str, list[str]]) -> None:
    _sid, model_id, _paths = trained
    response = _archive(api, model_id, "weights/w1")
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith("http://testserver/api/v1/archives/")
    assert response.headers["expires"].endswith(" GMT")
    download = api.client.get(location)  # no API key
    assert download.status_code == 200
    assert int(download.headers["content-length"]) == len(download.content)
    with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.json"]
    # Tampered: change one character of the payload.
    token = location.rsplit("/", 1)[1]
    tampered = ("A" if token[0] != "A" else "B") + token[1:]
    bad = api.client.get(location.rsplit("/", 1)[0] + "/" + tampered)
    assert bad.status_code == 403 and "signature" in bad.json()["detail"]
    assert api.client.get(location + "x").status_code == 403
    assert api.client.get(location.rsplit("/", 1)[0] + "/garbage").status_code == 403
    # Another tenant cannot get a link; unknown checkpoints are 404.
    assert _archive(api.as_key(OTHER_KEY), model_id, "weights/w1").status_code == 404
    assert _archive(api, model_id, "weights/nope").status_code == 404
    # A link to a deleted checkpoint stops working.
    api.delete(f"training_runs/{model_id}/checkpoints/weights/w1")
    assert api.client.get(location).status_code == 404


def test_archive_expired(make_fake_server: Callable[..., Api], tmp_path: pathlib.Path) -> None:
    api = make_fake_server(archive_url_ttl_s=1)
    model_id = api.create_model(api.session())
    _save(api, model_id, 1, "w")
    location = _archive(api, model_id, "weights/w").headers["location"]
    signer = ArchiveSigner(tmp_path / "home" / "archive_secret")
    token = location.rsplit("/", 1)[1]
    assert signer.verify(token).checkpoint_id == "weights/w"
    expired, _ = signer.sign(model_id, "weights/w", ttl_s=-5)
    response = api.client.get(location.rsplit("/", 1)[0] + "/" + expired)
    assert response.status_code == 403 and "expired" in response.json()["detail"]


def test_public_base_url(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server(public_base_url="https://tinker.example.org/prefix/")
    model_id = api.create_model(api.session())
    _save(api, model_id, 1, "w")
    location = _archive(api, model_id, "weights/w").headers["location"]
    assert location.startswith("https://tinker.example.org/prefix/api/v1/archives/")


def test_sessions_and_samplers(api: Api, trained: tuple[str, str, list[str]]) -> None:
    sid, model_id, paths = trained
    time.sleep(0.01)
    sid2 = api.session()
    assert api.get("sessions").json() == {"sessions": [sid2, sid]}
    assert api.get("sessions", params={"limit": 1, "offset": 1}).json() == {"sessions": [sid]}
    assert api.as_key(OTHER_KEY).get("sessions").json() == {"sessions": []}
    eph = api.result("save_weights_for_sampler", {"model_id": model_id, "sampling_session_seq_id": 0, "seq_id": 6})
    named = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 1, "base_model": None, "model_path": paths[1]},
    )["sampling_session_id"]
    assert api.get(f"sessions/{sid}").json() == {
        "training_run_ids": [model_id],
        "sampler_ids": [eph["sampling_session_id"], named],
    }
    assert api.get(f"sessions/{sid2}").json() == {"training_run_ids": [], "sampler_ids": []}
    assert api.get("sessions/nope").status_code == 404
    assert api.as_key(OTHER_KEY).get(f"sessions/{sid}").status_code == 404
    assert api.get(f"samplers/{eph['sampling_session_id']}").json() == {
        "sampler_id": eph["sampling_session_id"],
        "base_model": FAKE_MODEL,
        "model_path": None,
    }
    assert api.get(f"samplers/{named}").json()["model_path"] == paths[1]
    assert api.get("samplers/nope").status_code == 404
    assert api.as_key(OTHER_KEY).get(f"samplers/{named}").status_code == 404
    # A create_sampling_session retry returns the same sampler.
    again = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 1, "base_model": None, "model_path": paths[1]},
    )
    assert again["sampling_session_id"] == named


def test_unload_model(api: Api, fake_engines: dict) -> None:
    model_id = api.create_model(api.session())
    out = api.result("unload_model", {"model_id": model_id})
    assert out == {"model_id": model_id, "type": "unload_model"}
    assert model_id not in fake_engines[FAKE_MODEL].adapters
    response = api.post("forward_backward", fb_body(model_id, 1))
    assert response.status_code == 410
    assert "unload_model" in response.json()["detail"]
    assert api.get(f"training_runs/{model_id}").status_code == 200


def test_ephemeral_samplers_are_bounded(api: Api, fake_engines: dict) -> None:
    sid = api.session()
    model_id = api.create_model(sid)
    samplers = [
        api.result("save_weights_for_sampler", {"model_id": model_id, "sampling_session_seq_id": i, "seq_id": i + 1})[
            "sampling_session_id"
        ]
        for i in range(6)
    ]
    engine = fake_engines[FAKE_MODEL]
    assert [s for s in samplers if s in engine.adapters] == samplers[2:]
    body = {
        "num_samples": 1,
        "prompt": {"chunks": [{"tokens": [1]}]},
        "sampling_params": {},
        "sampling_session_id": samplers[0],
        "seq_id": 0,
    }
    response = api.post("asample", body)
    assert response.status_code == 410 and "newer sampler" in response.json()["detail"]
    assert api.result("asample", {**body, "sampling_session_id": samplers[-1]})["sequences"]


def test_checkpoint_samplers_are_evicted_and_reloaded(make_fake_server: Callable[..., Api], fake_engines: dict) -> None:
    api = make_fake_server(max_checkpoint_samplers=2, max_sample_batch=1)
    sid = api.session()
    model_id = api.create_model(sid)
    path = _save(api, model_id, 1, "s", "save_weights_for_sampler")
    samplers = [
        api.ok(
            "create_sampling_session",
            {"session_id": sid, "sampling_session_seq_id": i, "base_model": None, "model_path": path},
        )["sampling_session_id"]
        for i in range(3)
    ]
    engine = fake_engines[FAKE_MODEL]
    assert not set(samplers) & set(engine.adapters)  # made without touching the engine
    body = {"num_samples": 1, "prompt": {"chunks": [{"tokens": [1]}]}, "sampling_params": {}, "seq_id": 0}
    for sampler in samplers:  # each request loads its adapter; the least recently used leaves
        assert api.result("asample", {**body, "sampling_session_id": sampler})["sequences"]
    assert [s for s in samplers if s in engine.adapters] == samplers[1:]
    assert api.result("asample", {**body, "sampling_session_id": samplers[0]})["sequences"]  # reloaded on demand
    assert [s for s in samplers if s in engine.adapters] == [samplers[0], samplers[2]]

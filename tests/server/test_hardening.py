"""Regressions of the defects found by probing the server as an attacker and a careless
user would (issue 11): shared checkpoints, signed links, size caps, 500s, lenient wire
models, file modes, logs and the Host header. Everything goes through HTTP."""

from __future__ import annotations

import logging
import os
import pathlib
import stat
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tinker_server.app import create_app
from tinker_server.guards import RedactTokens, redact
from tinker_server.settings import Settings

from .conftest import FAKE_MODEL, OTHER_KEY, Api, datum, fb_body

TINY = "tinker-test/tiny-llama"  # served lazily: these apps never load it


def _save(api: Api, model_id: str, seq: int, name: str, kind: str = "save_weights") -> str:
    return str(api.result(kind, {"model_id": model_id, "path": name, "seq_id": seq})["path"])


def _checkpoint_id(path: str) -> str:
    return path.split("/", 3)[3]


def _sampler(api: Api, model_path: str, seq: int = 0) -> str:
    sid = api.session()
    body = {"session_id": sid, "sampling_session_seq_id": seq, "model_path": model_path}
    return str(api.ok("create_sampling_session", body)["sampling_session_id"])


def _sample_body(sampler: str, **params: Any) -> dict[str, Any]:
    return {
        "num_samples": params.pop("num_samples", 1),
        "prompt": params.pop("prompt", {"chunks": [{"tokens": [1, 2]}]}),
        "sampling_params": {"max_tokens": 2, **params},
        "sampling_session_id": sampler,
    }


def _detail(response: Any) -> str:
    return str(response.json()["detail"])


@pytest.fixture
def run(api: Api) -> str:
    model_id = api.create_model(api.session())
    api.result("forward_backward", fb_body(model_id, 1))
    return model_id


# -- 1. samplers made from another tenant's public checkpoint -------------------------------


def test_public_sampler_is_cut_off_by_unpublish_restart_and_delete(
    make_fake_server: Callable[..., Api], fake_engines: dict[str, Any]
) -> None:
    owner = make_fake_server()
    model_id = owner.create_model(owner.session())
    path = _save(owner, model_id, 1, "shared", "save_weights_for_sampler")
    ckpt = f"training_runs/{model_id}/checkpoints/{_checkpoint_id(path)}"
    assert owner.post(f"{ckpt}/publish").status_code == 200
    other = owner.as_key(OTHER_KEY)
    sampler = _sampler(other, path)
    assert other.result("asample", _sample_body(sampler))["sequences"]

    assert owner.delete(f"{ckpt}/publish").status_code == 200  # unpublished
    refused = other.post("asample", _sample_body(sampler))
    assert refused.status_code == 410 and "no longer shared with you" in _detail(refused)
    assert owner.result("asample", _sample_body(_sampler(owner, path)))["sequences"]  # the owner still may

    # A restart reloads the sampler from disk: still refused.
    owner.close()
    fake_engines.clear()
    owner = make_fake_server()
    other = owner.as_key(OTHER_KEY)
    assert other.post("asample", _sample_body(sampler)).status_code == 410
    assert owner.post(f"{ckpt}/publish").status_code == 200
    assert other.result("asample", _sample_body(sampler))["sequences"]  # public again: usable again

    assert owner.delete(ckpt).status_code == 200
    gone = other.post("asample", _sample_body(sampler))
    assert gone.status_code == 410 and "no longer exists or is no longer shared" in _detail(gone)
    assert owner.post("asample", _sample_body(sampler)).status_code == 404  # another tenant's sampler


# -- 2. signed links name exact content and the publication --------------------------------


def _link(api: Api, model_id: str, checkpoint_id: str) -> str:
    response = api.get(f"training_runs/{model_id}/checkpoints/{checkpoint_id}/archive", follow_redirects=False)
    assert response.status_code == 302, response.text
    return str(response.headers["location"])


def test_archive_links_stop_after_unpublish_overwrite_and_delete(api: Api, run: str) -> None:
    other = api.as_key(OTHER_KEY)
    _save(api, run, 2, "w")
    ckpt = f"training_runs/{run}/checkpoints/weights/w"
    assert api.post(f"{ckpt}/publish").status_code == 200
    public_link, owner_link = _link(other, run, "weights/w"), _link(api, run, "weights/w")
    assert api.client.get(public_link).status_code == 200

    assert api.delete(f"{ckpt}/publish").status_code == 200
    refused = api.client.get(public_link)
    assert refused.status_code == 404 and "request a new link" in _detail(refused)
    assert api.client.get(owner_link).status_code == 200  # the owner's own link does not depend on publication

    # Deleted, then a new private checkpoint of the same name: no old link serves it.
    assert api.delete(ckpt).status_code == 200
    _save(api, run, 3, "w")
    assert api.client.get(owner_link).status_code == 404
    assert api.client.get(public_link).status_code == 404
    fresh = _link(api, run, "weights/w")
    assert api.client.get(fresh).status_code == 200
    _save(api, run, 4, "w")  # overwritten (0.5.1 saves replace): the link named the old weights
    assert api.client.get(fresh).status_code == 404


def test_external_file_links_stop_after_unpublish(api: Api, run: str) -> None:
    other = api.as_key(OTHER_KEY)
    api.result("save_weights_external", {"model_id": run, "path": "e", "seq_id": 2})
    ckpt = f"training_runs/{run}/checkpoints/external_weights/e"
    assert api.post(f"{ckpt}/publish").status_code == 200
    urls = other.get(f"{ckpt}/external_weights_urls").json()["urls"]
    url = next(iter(urls.values()))
    fetched = api.client.get(url)
    assert fetched.status_code == 200 and int(fetched.headers["content-length"]) == len(fetched.content)
    assert api.delete(f"{ckpt}/publish").status_code == 200
    assert api.client.get(url).status_code == 404


# -- 3. another tenant's view of a run with a public checkpoint ----------------------------


def test_public_run_view_shows_no_private_parts(api: Api) -> None:
    sid = api.session()
    body = {
        "session_id": sid,
        "model_seq_id": 0,
        "base_model": FAKE_MODEL,
        "user_metadata": {"secret": "project x"},
        "lora_config": {"rank": 8},
    }
    model_id = api.result("create_model", body)["model_id"]
    public = _save(api, model_id, 1, "shared", "save_weights_for_sampler")
    _save(api, model_id, 2, "private-one")
    assert api.post(f"training_runs/{model_id}/checkpoints/{_checkpoint_id(public)}/publish").status_code == 200

    mine = api.get(f"training_runs/{model_id}").json()
    assert mine["user_metadata"] == {"secret": "project x"} and mine["model_owner"].startswith("user-")
    theirs = api.as_key(OTHER_KEY).get(f"training_runs/{model_id}").json()
    assert theirs["base_model"] == FAKE_MODEL and theirs["lora_rank"] == 8 and theirs["is_lora"] is True
    assert theirs["model_owner"] == "" and theirs.get("user_metadata") is None
    assert theirs["last_checkpoint"] is None  # the newest training checkpoint is private
    assert theirs["last_sampler_checkpoint"]["tinker_path"] == public
    assert "private-one" not in str(theirs)
    listed = api.as_key(OTHER_KEY).get(f"training_runs/{model_id}/checkpoints").json()["checkpoints"]
    assert [c["tinker_path"] for c in listed] == [public]


# -- 4. saving over a published name -------------------------------------------------------


def test_saving_over_a_public_name_makes_it_private(api: Api, run: str) -> None:
    path = _save(api, run, 2, "w")
    assert api.post(f"training_runs/{run}/checkpoints/weights/w/publish").status_code == 200
    assert api.as_key(OTHER_KEY).post("weights_info", {"tinker_path": path}).status_code == 200
    _save(api, run, 3, "w")  # new weights under the published name
    (listed,) = api.get(f"training_runs/{run}/checkpoints").json()["checkpoints"]
    assert listed["public"] is False
    assert api.as_key(OTHER_KEY).post("weights_info", {"tinker_path": path}).status_code == 404


# -- 5. size caps --------------------------------------------------------------------------


def test_body_caps(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server(max_small_body_bytes=4096, max_body_bytes=64 * 1024)
    big = {"tags": [], "user_metadata": {"blob": "x" * 10_000}, "sdk_version": "0.5.1"}
    refused = api.post("create_session", big)
    assert refused.status_code == 413 and "larger than this route accepts (4096 bytes)" in _detail(refused)
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    assert api.client.post("/api/v1/telemetry", content=b"x" * 10_000).status_code == 413  # no key needed, capped
    assert api.client.post("/api/v1/telemetry", content=b"{}").status_code == 200

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b"x" * 1000

    streamed = api.client.post("/api/v1/telemetry", content=chunked())
    assert streamed.status_code == 413 and "4096 bytes" in _detail(streamed)
    # Heavy routes take the larger cap.
    model_id = api.create_model(api.session())
    assert api.post("forward_backward", fb_body(model_id, 1, [datum([1, 2, 3])] * 20)).status_code == 200
    assert api.post("forward_backward", fb_body(model_id, 2, [datum([1, 2, 3] * 100)] * 100)).status_code == 413


def test_token_caps(make_fake_server: Callable[..., Api]) -> None:
    api = make_fake_server(max_train_tokens_per_request=10, max_sample_tokens_per_request=20)
    model_id = api.create_model(api.session())
    refused = api.post("forward_backward", fb_body(model_id, 1, [datum([1, 2, 3])] * 4))
    assert refused.status_code == 400 and "12 tokens, more than the 10" in _detail(refused)
    forward = {"forward_input": fb_body(model_id, 2, [datum([1, 2, 3])] * 4)["forward_backward_input"]}
    assert api.post("forward", {**forward, "model_id": model_id, "seq_id": 2}).status_code == 400
    assert api.post("forward_backward", fb_body(model_id, 3, [datum([1, 2, 3])] * 3)).status_code == 200
    sid = api.session()
    sampler = api.ok(
        "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE_MODEL}
    )
    costly = api.post("asample", _sample_body(sampler["sampling_session_id"], num_samples=3, max_tokens=6))
    assert costly.status_code == 400 and "may cost 24 tokens" in _detail(costly)
    assert (
        api.post("asample", _sample_body(sampler["sampling_session_id"], num_samples=2, max_tokens=6)).status_code
        == 200
    )


# -- 6. 400s, not 500s ---------------------------------------------------------------------


def test_out_of_range_integers_are_400(api: Api, run: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    huge = 2**70
    sid = api.session()
    cases = [
        api.post("forward_backward", fb_body(run, huge)),
        api.post("forward_backward", fb_body(run, 5, [datum([1, huge, 3])])),
        api.post("create_model", {"session_id": sid, "model_seq_id": huge, "base_model": FAKE_MODEL}),
        api.post(
            "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": huge, "base_model": FAKE_MODEL}
        ),
        api.post("optim_step", {"model_id": run, "seq_id": huge, "adam_params": {}}),
        api.get("training_runs", params={"limit": huge}),
        api.get("training_runs", params={"offset": 2**64}),
        api.get("checkpoints", params={"offset": huge}),
        api.get("sessions", params={"limit": huge}),
    ]
    for response in cases:
        assert response.status_code == 400, response.text
    unknown = datum([1, 2, 3])
    unknown["loss_fn_inputs"]["nonsense"] = [1, 2, 3]  # a plain list, not a tensor
    assert api.post("forward_backward", fb_body(run, 6, [unknown])).status_code == 400
    for token in ("é.x", "%C3%A9abc.def", "x" * 10_000):
        for route in ("archives", "external_files"):
            response = api.client.get(f"/api/v1/{route}/{token}")
            assert response.status_code in (403, 404), response.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# -- 7. strict wire objects ----------------------------------------------------------------


def test_misspelt_and_bad_values_are_refused(api: Api, run: str) -> None:
    sid = api.session()
    sampler = api.ok(
        "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE_MODEL}
    )
    sampler_id = sampler["sampling_session_id"]
    body = _sample_body(sampler_id)
    body["sampling_params"] = {"max_token": 5}
    misspelt = api.post("asample", body)
    assert misspelt.status_code == 400 and "sampling_params.max_token: unknown field" in _detail(misspelt)
    # Every field an official client sends is accepted (0.38 sends them all, defaults included).
    every = {"max_tokens": 2, "seed": 3, "stop": None, "temperature": 1.0, "top_k": -1, "top_p": 1.0}
    full = {**_sample_body(sampler_id), "sampling_params": every, "type": "sample", "topk_sample_logprobs": 0}
    assert api.post("asample", {**full, "record_stability_info": False, "prompt_alt_tokens_k": 0}).status_code == 200

    adam = api.post("optim_step", {"model_id": run, "seq_id": 2, "adam_params": {"learning_rate": 1e308}})
    assert adam.status_code == 400 and "learning_rate" in _detail(adam)
    typo = api.post("optim_step", {"model_id": run, "seq_id": 3, "adam_params": {"learnin_rate": 0.1}})
    assert typo.status_code == 400 and "unknown field" in _detail(typo)
    lora = {"session_id": sid, "model_seq_id": 9, "base_model": FAKE_MODEL, "lora_config": {"rank": 8, "rnak": 4}}
    assert api.post("create_model", lora).status_code == 400

    fractional = datum([1, 2, 3])
    fractional["loss_fn_inputs"]["target_tokens"]["data"] = [1.5, 2, 3]
    response = api.post("forward_backward", fb_body(run, 4, [fractional]))
    assert response.status_code == 400 and "1.5 is not a whole number" in _detail(response)
    negative = datum([1, 2, 3])
    negative["loss_fn_inputs"]["target_tokens"]["shape"] = [-1, -3]
    assert api.post("forward_backward", fb_body(run, 5, [negative])).status_code == 400
    whole = datum([1, 2, 3])
    whole["loss_fn_inputs"]["target_tokens"]["data"] = [2.0, 3.0, 1.0]  # integral floats are fine
    assert api.post("forward_backward", fb_body(run, 6, [whole])).status_code == 200


# -- 8. files, logs, Host, error bodies ----------------------------------------------------


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_database_and_checkpoints_are_private(api: Api, run: str) -> None:
    home = api.runtime.settings.home
    _save(api, run, 2, "w")
    assert _link(api, run, "weights/w")  # creates the archive secret
    assert _mode(home) == 0o700
    assert _mode(home / "tinker.db") == 0o600
    assert _mode(home / "archive_secret") == 0o600
    folder = home / "checkpoints"
    for path in [folder, *folder.rglob("*")]:
        assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))


def test_startup_tightens_an_existing_home(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    (home / "checkpoints" / "run" / "weights" / "w").mkdir(parents=True)
    (home / "tinker.db").write_bytes(b"")
    os.chmod(home, 0o755)
    os.chmod(home / "tinker.db", 0o644)
    (home / "checkpoints" / "run" / "weights" / "w" / "adapter_config.json").write_text("{}")
    os.chmod(home / "checkpoints" / "run" / "weights" / "w" / "adapter_config.json", 0o644)
    create_app(Settings(home=home, models=[TINY]))
    assert _mode(home) == 0o700 and _mode(home / "tinker.db") == 0o600
    assert _mode(home / "checkpoints" / "run" / "weights" / "w" / "adapter_config.json") == 0o600


def test_download_tokens_are_redacted_from_logged_urls() -> None:
    line = redact("GET /api/v1/archives/eyJyIjoi.c2ln HTTP/1.1 and /api/v1/external_files/abc.def?x=1&token=t0k")
    assert "eyJyIjoi" not in line and "abc.def" not in line and "t0k" not in line
    assert "/api/v1/archives/<redacted>" in line
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/api/v1/archives/secret.token", "1.1", 200), None,
    )  # fmt: skip
    RedactTokens().filter(record)
    assert "secret.token" not in record.getMessage()
    assert any(isinstance(f, RedactTokens) for f in logging.getLogger("uvicorn.access").filters)


def test_host_header_is_checked_on_a_loopback_server(tmp_path: pathlib.Path) -> None:
    settings = Settings(
        home=tmp_path / "home", models=[TINY], public_base_url="https://tinker.example.org", allowed_hosts=["lab"]
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as client:
        assert client.get("/api/v1/healthz").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "tinker.example.org", "lab:8000"):
            assert client.get("/api/v1/healthz", headers={"Host": host}).status_code == 200, host
        refused = client.get("/api/v1/healthz", headers={"Host": "rebind.attacker.example:8000"})
        assert refused.status_code == 421 and "loopback" in refused.json()["detail"]
        assert refused.headers["x-request-id"] == refused.json()["request_id"]

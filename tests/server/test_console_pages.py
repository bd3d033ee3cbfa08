"""The console's page, HTML fragments and JSON (fake engine): keys, tenants, paging,
statuses, checkpoint actions, the queue."""

from __future__ import annotations

import datetime as dt
import io
import re
import tarfile
import time
from typing import Any

import pytest

from tinker_server.db import SessionRow

from .conftest import FAKE_MODEL, FAKE_MODEL_B, OTHER_KEY, Api, fb_body
from .fake_engine import FakeEngine


def _html(api: Api, path: str, **params: Any) -> str:
    response = api.client.get(f"/console/fragments/{path}", headers=api.headers, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    return response.text


def _trained_run(api: Api, steps: int = 2) -> tuple[str, list[float]]:
    run = api.create_model(api.session())
    losses = []
    for step in range(steps):
        losses.append(api.result("forward_backward", fb_body(run, 2 * step + 1))["metrics"]["loss:sum"])
        api.result("optim_step", {"adam_params": {"learning_rate": 0.1}, "model_id": run, "seq_id": 2 * step + 2})
    return run, losses


def test_the_page_needs_no_key_and_keeps_it_out_of_urls(api: Api) -> None:
    page = api.client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "form-action 'none'" in csp  # forms never navigate
    assert page.headers["referrer-policy"] == "no-referrer"
    assert 'type="password"' in page.text and "/console/static/console.js" in page.text
    assert api.client.get("/console/", follow_redirects=False).headers["location"] == "/console"
    script = api.client.get("/console/static/console.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    # The script sends the key as a header and keeps it in sessionStorage, nowhere else.
    assert '"X-API-Key"' in script.text and "sessionStorage" in script.text
    assert "localStorage" not in script.text and "document.cookie" not in script.text
    assert api.client.get("/console/static/console.css").headers["content-type"].startswith("text/css")
    for name in ("missing.js", "..%2Fapp.py", ".hidden.js", "routes.py"):
        assert api.client.get(f"/console/static/{name}").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/console/fragments/runs",
        "/console/fragments/sessions",
        "/console/fragments/queue",
        "/console/fragments/playground",
        "/api/v1/console/runs",
        "/api/v1/console/queue",
    ],
)
def test_everything_but_the_page_needs_a_key(api: Api, path: str) -> None:
    response = api.client.get(path)
    assert response.status_code == 401 and "API key" in response.json()["detail"]


def test_runs_are_paginated_with_their_status(api: Api) -> None:
    sid = api.session()
    runs = [api.create_model(sid, seq) for seq in range(3)]
    api.result("unload_model", {"model_id": runs[0]})
    api.result("save_weights", {"model_id": runs[2], "path": "a", "seq_id": 1})
    first = api.get("console/runs", params={"limit": 2}).json()
    assert first["page"] == {"offset": 0, "limit": 2, "total": 3}
    second = api.get("console/runs", params={"limit": 2, "offset": 2}).json()
    listed = [r["run_id"] for r in first["runs"] + second["runs"]]
    assert sorted(listed) == sorted(runs)
    by_id = {r["run_id"]: r for r in first["runs"] + second["runs"]}
    assert by_id[runs[0]]["status"] == "unloaded" and "unload_model" in by_id[runs[0]]["status_reason"]
    assert by_id[runs[1]]["status"] == "active" and by_id[runs[1]]["status_reason"] is None
    assert by_id[runs[2]]["checkpoints"] == 1 and by_id[runs[2]]["lora_rank"] == 8
    assert by_id[runs[2]]["base_model"] == FAKE_MODEL
    html = _html(api, "runs", limit=2)
    assert html.count("<tr data-run-id=") == 2
    assert "1–2 of 3" in html and 'href="#/runs?offset=2"' in html
    assert "it was unloaded with unload_model" in _html(api, "runs", limit=2, offset=2)  # the oldest run
    for bad in ({"limit": 0}, {"limit": 1000}, {"offset": -1}):
        assert api.get("console/runs", params=bad).status_code == 400


def test_the_run_page_charts_each_step_with_the_exact_values(api: Api) -> None:
    run, losses = _trained_run(api, steps=3)
    html = _html(api, f"runs/{run}")
    figure = html.split('data-kind="forward_backward" data-metric="loss:sum"', 1)[1].split("</figure>", 1)[0]
    points = re.findall(r'data-step="(\d+)" data-value="([^"]+)"', figure)
    assert [int(s) for s, _ in points] == [1, 2, 3]
    assert [float(v) for _, v in points] == losses
    assert 'data-metric="learning_rate"' in html and 'data-metric="step"' in html


def test_user_values_are_escaped(api: Api) -> None:
    sid = api.session()
    body = {
        "session_id": sid,
        "model_seq_id": 0,
        "base_model": FAKE_MODEL,
        "user_metadata": {"note": "<script>alert(1)</script>"},
        "lora_config": {"rank": 4},
    }
    run = api.result("create_model", body)["model_id"]
    html = _html(api, f"runs/{run}")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_checkpoints_on_the_run_page_can_be_downloaded_published_and_deleted(api: Api) -> None:
    run, _ = _trained_run(api, steps=1)
    for i, name in enumerate(["a", "b", "c"]):
        api.result("save_weights", {"model_id": run, "path": name, "seq_id": 3 + i})
    api.result("save_weights_for_sampler", {"model_id": run, "path": "s", "seq_id": 6})
    detail = api.get(f"console/runs/{run}", params={"checkpoints_limit": 2}).json()
    assert detail["checkpoints_page"] == {"offset": 0, "limit": 2, "total": 4}
    assert [c["checkpoint_id"] for c in detail["checkpoints"]] == ["sampler_weights/s", "weights/c"]
    rest = api.get(f"console/runs/{run}", params={"checkpoints_limit": 2, "checkpoints_offset": 2}).json()
    assert [c["checkpoint_id"] for c in rest["checkpoints"]] == ["weights/b", "weights/a"]
    html = _html(api, f"runs/{run}", checkpoints_limit=2)
    assert 'data-action="confirm-delete"' in html and 'href="#/playground?model_path=tinker' in html
    # Download: a signed link (no key in it) that serves the tar without a key.
    link = api.get(f"console/runs/{run}/checkpoints/weights/a/download").json()
    assert "/api/v1/archives/" in link["url"] and "test-key" not in link["url"]
    tar = api.client.get(link["url"])
    assert tar.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        assert "adapter_config.json" in archive.getnames()
    # Publish and delete go through the ordinary REST routes the page calls.
    assert api.post(f"training_runs/{run}/checkpoints/weights/a/publish").status_code == 200
    assert api.delete(f"training_runs/{run}/checkpoints/weights/b").status_code == 200
    after = {c["checkpoint_id"]: c for c in api.get(f"console/runs/{run}").json()["checkpoints"]}
    assert after["weights/a"]["public"] is True and "weights/b" not in after


def test_another_tenant_sees_none_of_it(api: Api) -> None:
    run, _ = _trained_run(api, steps=1)
    api.result("save_weights_for_sampler", {"model_id": run, "path": "s", "seq_id": 3})
    api.result("save_weights", {"model_id": run, "path": "pub", "seq_id": 4})
    api.post(f"training_runs/{run}/checkpoints/weights/pub/publish")  # even a public one
    other = api.as_key(OTHER_KEY)
    assert other.get("console/runs").json() == {"runs": [], "page": {"offset": 0, "limit": 25, "total": 0}}
    assert other.get(f"console/runs/{run}").status_code == 404
    assert other.client.get(f"/console/fragments/runs/{run}", headers=other.headers).status_code == 404
    assert other.get(f"console/runs/{run}/checkpoints/sampler_weights/s/download").status_code == 404
    assert other.get("console/sessions").json()["sessions"] == []
    assert other.get("console/playground/models").json()["checkpoints"] == []
    assert run not in _html(other, "runs") and run not in _html(other, "sessions")
    assert "sampler_weights/s" not in _html(other, "playground")
    assert other.delete(f"training_runs/{run}/checkpoints/sampler_weights/s").status_code == 404
    sample = other.post(
        "console/playground/sample", {"model_path": f"tinker://{run}/sampler_weights/s", "prompt": "hi"}
    )
    assert sample.status_code == 404


def test_sessions_show_their_state_heartbeat_and_runs(api: Api) -> None:
    alive, finished, expired = api.session(), api.session(), api.session()
    run = api.create_model(alive)
    api.create_model(finished)
    assert api.post(f"sessions/{finished}/finish", {"reason": {"type": "success"}}).status_code == 200
    runtime = api.runtime
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=runtime.settings.session_timeout_s + 5)
    with runtime.db.session() as s:  # only `alive` beats until `later`
        row = s.get(SessionRow, alive)
        assert row is not None
        row.last_heartbeat = later
    runtime.sessions.expire_stale(later)
    page = api.get("console/sessions").json()
    states = {x["session_id"]: x for x in page["sessions"]}
    assert states[alive]["status"] == "alive" and states[alive]["runs"] == [run]
    assert states[finished]["status"] == "finished" and states[finished]["finished_reason"] == "success"
    assert states[expired]["status"] == "expired" and states[expired]["runs"] == []
    assert page["page"]["total"] == 3
    html = _html(api, "sessions")
    assert html.count("<tr data-session-id=") == 3 and ">finished<" in html and ">expired<" in html


def test_the_queue_shows_waiting_and_running_work_per_model(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    run = api.create_model(api.session())
    engine = fake_engines[FAKE_MODEL]
    engine.gate.clear()
    try:
        first = api.ok("forward_backward", fb_body(run, 1))["request_id"]
        api.ok("forward_backward", fb_body(run, 2))
        api.ok("optim_step", {"adam_params": {"learning_rate": 0.1}, "model_id": run, "seq_id": 3})
        for _ in range(100):  # the worker takes the first one and waits at the gate
            queue = {m["base_model"]: m for m in api.get("console/queue").json()["models"]}
            if queue[FAKE_MODEL]["running"] == 1:
                break
            time.sleep(0.05)
        assert queue[FAKE_MODEL]["running"] == 1 and queue[FAKE_MODEL]["waiting_training"] == 2
        assert queue[FAKE_MODEL]["loaded"] is True
        assert queue[FAKE_MODEL_B] == {**queue[FAKE_MODEL_B], "loaded": False, "running": 0, "waiting_training": 0}
        assert f'data-model="{FAKE_MODEL}"' in _html(api, "queue")
    finally:
        engine.gate.set()
    api.poll(first)
    rate = {m["base_model"]: m for m in api.get("console/queue").json()["models"]}[FAKE_MODEL]
    assert rate["train_tokens_per_s"] > 0


def test_playground_checks_its_target(api: Api) -> None:
    assert api.post("console/playground/sample", {"prompt": "hi"}).status_code == 400
    unknown = api.post("console/playground/sample", {"base_model": "nope/model", "prompt": "hi"})
    assert unknown.status_code == 400 and FAKE_MODEL in unknown.json()["detail"]
    assert api.post("console/playground/sample", {"base_model": FAKE_MODEL, "prompt": ""}).status_code == 400
    # The fake engine's tokenizer folder holds no real tokenizer: a clear 503.
    broken = api.post("console/playground/sample", {"base_model": FAKE_MODEL, "prompt": "hi"})
    assert broken.status_code == 503 and "tokenizer" in broken.json()["detail"]
    models = api.get("console/playground/models").json()
    assert models["base_models"] == [FAKE_MODEL, FAKE_MODEL_B]

"""GET /metrics (Prometheus text), request ids, and the access log (fake engine)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tinker_server.api.errors import install_error_handlers
from tinker_server.observability import RequestObserver

from .conftest import FAKE_MODEL, FAKE_MODEL_B, KEY, Api, datum, fb_body
from .fake_engine import FakeEngine

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

FAMILIES = {
    "tinker_http_requests",
    "tinker_http_request_duration_seconds",
    "tinker_queue_depth",
    "tinker_queue_wait_seconds",
    "tinker_engine_step_seconds",
    "tinker_tokens_trained",
    "tinker_tokens_sampled",
    "tinker_adapters_resident",
    "tinker_sessions_alive",
}


def scrape(api: Api) -> Samples:
    response = api.client.get("/metrics")  # no API key
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def sampler(api: Api, sid: str, seq: int = 0) -> str:
    body = {"session_id": sid, "sampling_session_seq_id": seq, "base_model": FAKE_MODEL, "model_path": None}
    return str(api.ok("create_sampling_session", body)["sampling_session_id"])


def sample_body(sampler_id: str, seq: int, *, num_samples: int = 1, max_tokens: int = 1) -> dict[str, Any]:
    return {
        "num_samples": num_samples,
        "prompt": {"chunks": [{"tokens": [1, 2, 3]}]},
        "sampling_params": {"max_tokens": max_tokens},
        "sampling_session_id": sampler_id,
        "seq_id": seq,
    }


def test_metrics_parse_without_a_key_and_start_at_zero(api: Api) -> None:
    response = api.as_key(None).client.get("/metrics")
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert names >= FAMILIES
    samples = scrape(api)
    for model in (FAKE_MODEL, FAKE_MODEL_B):
        assert value(samples, "tinker_queue_depth", base_model=model) == 0
        assert ("tinker_tokens_trained_total", (("base_model", model),)) in samples
        assert value(samples, "tinker_tokens_sampled_total", base_model=model) == 0
    assert value(samples, "tinker_sessions_alive") == 0


def test_work_moves_the_counters(api: Api) -> None:
    sid = api.session()
    model_id = api.create_model(sid)
    eventually(lambda: value(scrape(api), "tinker_adapters_resident", base_model=FAKE_MODEL) == 1)

    data = [datum([1, 2, 3]), datum([4, 5, 6, 7])]
    api.result("forward_backward", fb_body(model_id, 1, data))
    forward = {"forward_input": fb_body(model_id, 0)["forward_backward_input"], "model_id": model_id, "seq_id": 2}
    api.result("forward", forward)  # forward only: no tokens trained
    api.result("optim_step", {"adam_params": {"learning_rate": 0.1}, "model_id": model_id, "seq_id": 3})
    api.result("asample", sample_body(sampler(api, sid), 0, num_samples=2, max_tokens=5))

    samples = scrape(api)
    assert value(samples, "tinker_tokens_trained_total", base_model=FAKE_MODEL) == 7
    assert value(samples, "tinker_tokens_sampled_total", base_model=FAKE_MODEL) == 10  # 2 samples x 5 tokens
    assert value(samples, "tinker_tokens_trained_total", base_model=FAKE_MODEL_B) == 0
    for kind in ("load_model", "create_adapter", "forward_backward", "forward", "optim_step", "sample"):
        assert value(samples, "tinker_engine_step_seconds_count", base_model=FAKE_MODEL, kind=kind) == 1, kind
    assert value(samples, "tinker_queue_wait_seconds_count", base_model=FAKE_MODEL) >= 5
    assert value(samples, "tinker_sessions_alive") == 1
    fb_route = {"method": "POST", "route": "/api/v1/forward_backward"}
    assert value(samples, "tinker_http_requests_total", **fb_route, status="200") == 1
    assert value(samples, "tinker_http_request_duration_seconds_count", **fb_route) == 1

    api.ok("session_heartbeat", {"session_id": sid})
    api.post(f"sessions/{sid}/finish", {"reason": {"type": "success"}})
    assert value(scrape(api), "tinker_sessions_alive") == 0


def test_queue_depth_while_the_worker_is_held(api: Api, fake_engines: dict[str, FakeEngine]) -> None:
    sid = api.session()
    model_id = api.create_model(sid)
    sampler_id = sampler(api, sid)
    engine = fake_engines[FAKE_MODEL]
    waits_before = value(scrape(api), "tinker_queue_wait_seconds_count", base_model=FAKE_MODEL)
    engine.gate.clear()
    try:
        blocker = api.ok("asample", sample_body(sampler_id, 0))["request_id"]
        eventually(lambda: ("sample", 1) in engine.calls)  # the worker holds it, in the engine
        queued = [
            api.ok("forward_backward", fb_body(model_id, 1))["request_id"],
            api.ok("forward_backward", fb_body(model_id, 2))["request_id"],
            api.ok("asample", sample_body(sampler_id, 1))["request_id"],
        ]
        samples = scrape(api)
        assert value(samples, "tinker_queue_depth", base_model=FAKE_MODEL) == 3
        assert value(samples, "tinker_queue_depth", base_model=FAKE_MODEL_B) == 0
    finally:
        engine.gate.set()
    for request_id in [blocker, *queued]:
        assert "error" not in api.poll(request_id)
    samples = scrape(api)
    assert value(samples, "tinker_queue_depth", base_model=FAKE_MODEL) == 0
    assert value(samples, "tinker_queue_wait_seconds_count", base_model=FAKE_MODEL) == waits_before + 4
    assert value(samples, "tinker_queue_wait_seconds_sum", base_model=FAKE_MODEL) > 0


def test_routes_are_templates_and_no_tenant_data_is_exposed(api: Api) -> None:
    sid = api.session()
    model_id = api.create_model(sid)
    saved = api.result("save_weights", {"model_id": model_id, "path": "ckpt-1", "seq_id": 1})
    checkpoint = saved["path"].split("/", 3)[3]  # weights/ckpt-1
    assert api.delete(f"training_runs/{model_id}/checkpoints/{checkpoint}").status_code == 200
    assert api.client.get("/no/such/path").status_code == 404
    text = api.client.get("/metrics").text
    for secret in (sid, model_id, "ckpt-1", KEY, "user-"):
        assert secret not in text
    samples = scrape(api)
    delete = {"method": "DELETE", "route": "/api/v1/training_runs/{run_id}/checkpoints/{checkpoint_id}"}
    assert value(samples, "tinker_http_requests_total", **delete, status="200") == 1
    assert value(samples, "tinker_http_requests_total", method="GET", route="unmatched", status="404") == 1


def test_each_app_counts_its_own_requests(make_fake_server: Callable[..., Api]) -> None:
    first, second = make_fake_server(), make_fake_server()
    first.session()
    first.session()
    second.session()
    route = {"method": "POST", "route": "/api/v1/create_session", "status": "200"}
    assert value(scrape(first), "tinker_http_requests_total", **route) == 2
    assert value(scrape(second), "tinker_http_requests_total", **route) == 1


# -- request ids and the access log -----------------------------------------------------------


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tinker_server.access"]


def test_request_id_in_error_bodies_headers_and_the_access_line(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinker_server.access")
    response = api.get("training_runs/no-such-run")
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"detail", "request_id"} and body["detail"]
    rid = body["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert response.headers["x-request-id"] == rid
    (line,) = [r for r in access_lines(caplog) if rid in r.getMessage()]
    message = line.getMessage()
    assert f"request_id={rid} " in message
    assert "method=GET route=/api/v1/training_runs/{run_id} status=404 duration_ms=" in message
    assert re.search(r" owner=user-[0-9a-f]{16}$", message)
    assert line.access["route"] == "/api/v1/training_runs/{run_id}"  # type: ignore[attr-defined]
    assert "no-such-run" not in message

    # Successful answers carry the header too; validation errors and 401s the body field.
    ok = api.client.get("/api/v1/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", ok.headers["x-request-id"]) and ok.headers["x-request-id"] != rid
    invalid = api.post("create_session", content=b"{not json", headers={"Content-Type": "application/json"})
    assert invalid.status_code == 400 and invalid.json()["request_id"] == invalid.headers["x-request-id"]
    anonymous = api.as_key(None).post("create_session", {"tags": [], "sdk_version": "0.5.1"})
    assert anonymous.status_code == 401 and anonymous.json()["request_id"] == anonymous.headers["x-request-id"]
    assert access_lines(caplog)[-1].getMessage().endswith(" owner=-")


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_x.y:z", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ('"quoted"', False),
        ("-x", False),
    ],
)
def test_incoming_request_id_is_kept_when_sane(api: Api, sent: str, kept: bool) -> None:
    response = api.get("training_runs/no-such-run", headers={"X-Request-Id": sent})
    rid = response.headers["x-request-id"]
    assert response.json()["request_id"] == rid
    if kept:
        assert rid == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)


def test_the_api_key_never_reaches_the_logs(
    make_fake_server: Callable[..., Api], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "tml-very-secret-key-0123456789"
    api = make_fake_server().as_key(key)
    sid = api.session()
    model_id = api.create_model(sid)
    api.result("forward_backward", fb_body(model_id, 1))
    api.get("training_runs/no-such-run")
    api.post("forward_backward", {"model_id": model_id})  # 400
    api.client.get("/oai/api/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert access_lines(caplog)
    for record in caplog.records:
        assert key not in record.getMessage()
        assert key not in repr(record.__dict__)
    assert key not in caplog.text


def test_unhandled_errors_carry_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    """A 500 is answered outside our middleware (by the server error handler): the handler
    itself adds the id, and the access line says 500."""

    class _Metrics:  # the two series the middleware records
        def __init__(self) -> None:
            self.seen: list[tuple[str, ...]] = []
            self.requests = self.request_seconds = self

        def labels(self, *labels: str) -> _Metrics:
            self.seen.append(labels)
            return self

        def inc(self) -> None:
            pass

        def observe(self, seconds: float) -> None:
            pass

    app = FastAPI()
    metrics = _Metrics()
    app.add_middleware(RequestObserver, metrics=metrics)  # type: ignore[arg-type]
    install_error_handlers(app)

    @app.get("/boom/{thing}")
    async def boom(thing: str) -> None:
        raise RuntimeError("kaboom")

    caplog.set_level(logging.INFO)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom/x", headers={"X-Request-Id": "trace-42"})
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal server error (request id trace-42); the server's log has the details",
        "request_id": "trace-42",
    }
    assert response.headers["x-request-id"] == "trace-42"
    (line,) = access_lines(caplog)
    assert line.getMessage().startswith("request_id=trace-42 method=GET route=/boom/{thing} status=500 ")
    assert ("GET", "/boom/{thing}", "500") in metrics.seen

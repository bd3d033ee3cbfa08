"""The API process ↔ engine boundary, through HTTP.

* A request is checked by the engine's rules at submit time whether the model is loaded
  yet or not (it used to be a 500, or a failed future, while the model loaded).
* One limit per rule: what the API accepts, the engine runs.
* The API process never imports torch; the engine runs in a worker process.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

from tinker_server.engine import MAX_LORA_RANK, MAX_NUM_SAMPLES

from .conftest import FAKE_MODEL, Api, datum, fb_body


def _detail(response: Any) -> str:
    assert response.status_code == 400, response.text
    return str(response.json()["detail"])


def _bad_vocab_body(model_id: str) -> dict[str, Any]:
    return fb_body(model_id, 1, [datum([1, 2, 9999])])


def test_a_cold_model_checks_requests_like_a_warm_one(make_fake_server: Callable[..., Api], fake_engines: dict) -> None:
    """While the base model is still loading, a forward_backward with an out-of-vocabulary
    token waits for the model's info and is refused with the same 400 as later."""
    api = make_fake_server()
    sid = api.session()
    model_id = api.create_model(sid)
    runtime = api.runtime
    # A second served model that is slow to load: its first request arrives while it loads.
    gate = threading.Event()
    worker = runtime.scheduler.worker("fake/model-b")
    real_factory = worker._factory

    def slow_factory(name: str) -> Any:
        gate.wait(10)
        return real_factory(name)

    worker._factory = slow_factory
    body = {
        "session_id": sid,
        "model_seq_id": 1,
        "base_model": "fake/model-b",
        "user_metadata": None,
        "lora_config": {"rank": 4},
    }
    created = api.ok("create_model", body)  # queued while the model loads
    cold_id = created["model_id"]
    threading.Timer(0.5, gate.set).start()
    started = time.monotonic()
    cold_detail = _detail(api.post("forward_backward", _bad_vocab_body(cold_id)))
    assert time.monotonic() - started >= 0.3  # it waited for the model's info
    warm_detail = _detail(api.post("forward_backward", _bad_vocab_body(model_id)))
    assert "token id 9999 is outside the vocabulary" in cold_detail
    assert cold_detail == warm_detail
    assert "error" not in api.poll(created["request_id"])


def test_limits_have_one_owner(api: Api) -> None:
    sid = api.session()
    body = {
        "session_id": sid,
        "model_seq_id": 0,
        "base_model": FAKE_MODEL,
        "user_metadata": None,
        "lora_config": {"rank": MAX_LORA_RANK + 1},
    }
    assert f"between 1 and {MAX_LORA_RANK}" in _detail(api.post("create_model", body))
    model_id = api.create_model(sid, seq=1, rank=MAX_LORA_RANK)  # the largest rank is accepted and runs
    sampler = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE_MODEL, "model_path": None},
    )["sampling_session_id"]
    sample = {
        "prompt": {"chunks": [{"tokens": [1, 2]}]},
        "sampling_params": {"max_tokens": 1},
        "sampling_session_id": sampler,
        "seq_id": 0,
    }
    assert f"from 1 to {MAX_NUM_SAMPLES}" in _detail(
        api.post("asample", {**sample, "num_samples": MAX_NUM_SAMPLES + 1})
    )
    assert len(api.result("asample", {**sample, "num_samples": MAX_NUM_SAMPLES})["sequences"]) == MAX_NUM_SAMPLES
    adam = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8}
    for bad, expected in [
        ({"eps": 0.0}, "eps must be > 0"),
        ({"learning_rate": 1e308}, "learning_rate must be between"),
    ]:
        response = api.post("optim_step", {"model_id": model_id, "seq_id": 1, "adam_params": {**adam, **bad}})
        assert expected in _detail(response)
    assert api.result("optim_step", {"model_id": model_id, "seq_id": 1, "adam_params": adam})["metrics"]


def test_the_api_process_never_imports_torch(tmp_path: pathlib.Path) -> None:
    """A whole training and sampling round trip on the real tiny model (Tinker API, OpenAI
    endpoint, console playground), engine in its worker process: the API process ends
    without torch or transformers imported."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from fastapi.testclient import TestClient
        from tinker_server.app import create_app
        from tinker_server.settings import Settings

        settings = Settings(home={str(tmp_path)!r}, models=["tinker-test/tiny-llama"], long_poll_s=1.0, torch_threads=1)
        headers = {{"X-API-Key": "tml-local"}}
        with TestClient(create_app(settings)) as client:
            def post(path, body):
                r = client.post("/api/v1/" + path, json=body, headers=headers)
                assert r.status_code == 200, r.text
                return r.json()

            def result(path, body):
                fut = post(path, body)
                while True:
                    r = client.post(
                        "/api/v1/retrieve_future", json={{"request_id": fut["request_id"]}}, headers=headers
                    )
                    if r.status_code == 200:
                        out = r.json()
                        assert "error" not in out, out
                        return out

            sid = post("create_session", {{"tags": [], "sdk_version": "0.5.1"}})["session_id"]
            model = result("create_model", {{"session_id": sid, "model_seq_id": 0,
                                             "base_model": "tinker-test/tiny-llama", "lora_config": {{"rank": 4}}}})
            tokens = [1, 2, 3, 4]
            d = {{"model_input": {{"chunks": [{{"tokens": tokens}}]}}, "loss_fn_inputs": {{
                "target_tokens": {{"data": tokens[1:] + [5], "dtype": "int64", "shape": [4]}}}}}}
            out = result("forward_backward", {{"model_id": model["model_id"], "seq_id": 1,
                "forward_backward_input": {{"data": [d], "loss_fn": "cross_entropy"}}}})
            assert out["metrics"]["loss:sum"] > 0
            saved = result("save_weights_for_sampler", {{"model_id": model["model_id"], "seq_id": 2, "path": "s"}})
            sampler = post("create_sampling_session", {{"session_id": sid, "sampling_session_seq_id": 0,
                                                       "model_path": saved["path"]}})["sampling_session_id"]
            out = result("asample", {{"sampling_session_id": sampler, "num_samples": 2, "seq_id": 0,
                "prompt": {{"chunks": [{{"tokens": tokens}}]}}, "sampling_params": {{"max_tokens": 4}}}})
            assert len(out["sequences"]) == 2
            r = client.post("/oai/api/v1/completions", headers={{"Authorization": "Bearer tml-local"}},
                            json={{"model": "tinker-test/tiny-llama", "prompt": "hello", "max_tokens": 3}})
            assert r.status_code == 200, r.text
            r = client.post("/api/v1/console/playground/sample", headers=headers,
                            json={{"base_model": "tinker-test/tiny-llama", "prompt": "hi", "max_tokens": 3}})
            assert r.status_code == 200, r.text
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        print("LEAKED", leaked[:5])
        sys.exit(1 if leaked else 0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_two_api_processes_sharing_a_database_never_both_accept_a_seq_id(
    make_fake_server: Callable[..., Api],
) -> None:
    """seq_id order is the database's: two servers on one home (as two API processes would
    share a database) race to accept each seq_id of a run; exactly one request is recorded
    for it, whichever server answers."""
    first = make_fake_server()
    second = make_fake_server()  # same home, same database
    model_id = first.create_model(first.session())
    for seq in range(1, 9):
        answers: dict[str, Any] = {}
        barrier = threading.Barrier(2)

        def submit(
            name: str,
            api: Api,
            seq: int = seq,
            barrier: threading.Barrier = barrier,
            answers: dict[str, Any] = answers,
        ) -> None:
            barrier.wait()
            answers[name] = api.post("forward_backward", fb_body(model_id, seq))

        threads = [threading.Thread(target=submit, args=(n, a)) for n, a in (("first", first), ("second", second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = {r.json()["request_id"] for r in answers.values() if r.status_code == 200}
        # One request took the id; the other is answered as its retry (same future) or refused.
        assert len(accepted) == 1, {n: r.text for n, r in answers.items()}
        for r in answers.values():
            if r.status_code != 200:
                assert r.status_code == 400 and "concurrent submit" in r.json()["detail"], r.text


def test_an_unsupported_architecture_is_refused_at_startup(tmp_path: pathlib.Path) -> None:
    """A served model directory whose config is no causal language model: the server refuses
    to start with a sentence naming the architecture (checked from the config, in a
    subprocess, so the API process still imports no transformers)."""
    import pytest
    from transformers import T5Config

    from tinker_server.runtime import Runtime
    from tinker_server.settings import Settings

    model_dir = tmp_path / "t5-tiny"
    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=64).save_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"t5-tiny cannot be served: .*architecture t5 .*not a causal language model"):
        Runtime(Settings(home=tmp_path / "home", models=[str(model_dir)]))
    with pytest.raises(ValueError, match="unknown model"):
        Runtime(Settings(home=tmp_path / "home", models=["nobody/not-in-any-cache"]))

"""Crash safety with a real process and a real ``kill -9`` (issue 11).

``python -m tinker_server`` with the tiny model on a temporary home; two tenants train through
our SDK (saves, a published checkpoint, a sampler); the server and its engine worker are
killed with SIGKILL while forward_backwards are in flight and a save is writing its files;
then a server is started again on the same home and port. Checked: every run, checkpoint,
session and published flag is still listed; ``PRAGMA integrity_check`` is ok; no half-written
checkpoint is listed or left on disk; the futures that were in flight resolve to an error
naming the restart (through the SDK's own polling and through a raw ``retrieve_future``); the
runs resume from their last saved state with the same weights (equal forward losses); and the
checkpoint sampler made before the crash samples again.

Also: a submit whose connection dropped before the answer, sent again with the same
``seq_id`` (what a client's retry does), is applied once (the weights equal a run's that got
it once).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tinker
from tinker._timings import Timings
from tinker_server.engine import TINY_MODEL
from tinker_server.launch import free_port

pytestmark = pytest.mark.slow

RESTART = "the server restarted before this request finished"
TIMINGS = Timings(poll_error_delay_max=0.5, heartbeat_interval=3600.0, telemetry_flush_interval=3600.0)


@contextlib.contextmanager
def server_process(home: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m tinker_server`` on ``port``; ready when ``/healthz`` answers. Killed (if still
    alive) when the block exits."""
    env = {**os.environ, "TINKER_TORCH_THREADS": "1", "TINKER_LONG_POLL_S": "1"}
    args = [sys.executable, "-m", "tinker_server", "--port", str(port), "--home", str(home), "--model", TINY_MODEL]
    with open(home / "server.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (home / "server.log").read_text()[-4000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield proc
    finally:
        for pid in [*children(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (the engine workers), from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    return found


def kill_all(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL the engine workers, then the server, at once; returns the workers' pids."""
    workers = children(proc.pid)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in workers:  # gone (reaped by init once their parent died)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
            assert time.monotonic() < deadline, f"worker {pid} survived SIGKILL"
            time.sleep(0.01)
    return workers


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def datum(tokens: list[int]) -> tinker.Datum:
    n = len(tokens) - 1
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
            "weights": tinker.TensorData(data=[1.0] * n, dtype="float32", shape=[n]),
        },
    )


DATA = [datum([(7 * i + 3) % 500 for i in range(12)]), datum([(11 * i + 40) % 500 for i in range(9)])]
BIG = [datum([(13 * i + j) % 500 + 1 for i in range(200)]) for j in range(16)]


def loss(tc: tinker.TrainingClient) -> float:
    return float(tc.forward(DATA, "cross_entropy").result(timeout=120).metrics["loss:sum"])


def train(tc: tinker.TrainingClient, steps: int) -> None:
    for _ in range(steps):
        tc.forward_backward(DATA, "cross_entropy").result(timeout=120)
        tc.optim_step(tinker.AdamParams(learning_rate=0.02)).result(timeout=120)


def integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def hidden_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*"))


def listing(rest: Any, run_ids: list[str]) -> dict[str, Any]:
    """What REST says about a tenant: its runs, their checkpoints (path, public), its sessions."""
    runs = {r.training_run_id: r for r in rest.list_training_runs(limit=100).result().training_runs}
    return {
        "runs": {rid: (runs[rid].base_model, runs[rid].lora_rank) for rid in run_ids},
        "checkpoints": {
            rid: sorted((c.tinker_path, c.public) for c in rest.list_checkpoints(rid).result().checkpoints)
            for rid in run_ids
        },
        "sessions": sorted(rest.list_sessions(limit=100).result().sessions),
    }


def raw_submit_then_drop(port: int, path: str, key: str, body: dict[str, Any]) -> None:
    """POST ``body`` and close the connection without reading the answer (a dropped connection)."""
    payload = json.dumps(body).encode()
    head = (
        f"POST /api/v1/{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + payload)
        sock.shutdown(socket.SHUT_WR)


def recorded(db: Path, run: str, seq_id: int, timeout: float = 30.0) -> None:
    """Wait until the request ``(run, seq_id)`` has its row."""
    deadline = time.monotonic() + timeout
    while True:
        con = sqlite3.connect(db, timeout=10)
        try:
            found = con.execute("SELECT 1 FROM requests WHERE model_id = ? AND seq_id = ?", (run, seq_id)).fetchone()
        finally:
            con.close()
        if found:
            return
        assert time.monotonic() < deadline, f"the dropped submit {run}#{seq_id} was never recorded"
        time.sleep(0.02)


def _outcome(fut: Any) -> str:
    """``done``, ``failed`` (with an error naming the restart) or ``refused`` (the SDK had not yet
    sent it when the server died; sent after the restart, the run answers 410 naming the restart)."""
    try:
        fut.result(timeout=60)
    except tinker.TinkerError as exc:
        if RESTART in str(exc):
            return "failed"
        assert "410" in str(exc) and "is no longer loaded: the server restarted" in str(exc), exc
        return "refused"
    return "done"


def test_kill_9_mid_training_and_mid_save_then_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    keys = ("crash-tenant-a", "crash-tenant-b")

    with server_process(home, port) as proc:
        sc_a = tinker.ServiceClient(base_url=url, api_key=keys[0], _timings=TIMINGS)
        sc_b = tinker.ServiceClient(base_url=url, api_key=keys[1], _timings=TIMINGS)
        tc_a = sc_a.create_lora_training_client(TINY_MODEL, rank=64, seed=1)
        tc_b = sc_b.create_lora_training_client(TINY_MODEL, rank=4, seed=2, train_mlp=False)
        train(tc_a, 2)
        train(tc_b, 3)
        saved_a = tc_a.save_state("a-step2").result().path
        saved_b = tc_b.save_state("b-step3").result().path
        loss_a, loss_b = loss(tc_a), loss(tc_b)
        sampler_path = tc_a.save_weights_for_sampler("a-sampler").result().path
        rest_a, rest_b = sc_a.create_rest_client(), sc_b.create_rest_client()
        rest_a.publish_checkpoint_from_tinker_path(sampler_path).result()
        sampler = sc_a.create_sampling_client(model_path=sampler_path)
        prompt = tinker.ModelInput.from_ints([5, 17, 42, 99])
        greedy = tinker.SamplingParams(max_tokens=6, temperature=0.0)
        tokens_before = sampler.sample(prompt, 1, greedy).result().sequences[0].tokens
        assert tc_a.model_id is not None and tc_b.model_id is not None
        runs_a, runs_b = [tc_a.model_id], [tc_b.model_id]
        before = (listing(rest_a, runs_a), listing(rest_b, runs_b))
        assert (sampler_path, True) in before[0]["checkpoints"][tc_a.model_id]

        # Work in flight at the kill: a queue of big forward_backwards of b (SDK futures and a
        # raw submit whose request id we keep), and a stream of saves of a.
        fb_futures = [tc_b.forward_backward(BIG, "cross_entropy") for _ in range(40)]
        raw = httpx.post(
            f"{url}/api/v1/forward_backward",
            headers={"X-API-Key": keys[1]},
            json={
                "model_id": tc_b.model_id,
                "seq_id": 10_000,
                "forward_backward_input": {
                    "data": [
                        {
                            "model_input": {"chunks": [{"type": "encoded_text", "tokens": list(range(1, 300))}]},
                            "loss_fn_inputs": {
                                "target_tokens": {"data": list(range(2, 301)), "dtype": "int64", "shape": [299]}
                            },
                        }
                    ],
                    "loss_fn": "cross_entropy",
                    "loss_fn_config": None,
                },
            },
        )
        assert raw.status_code == 200, raw.text
        raw_request = raw.json()["request_id"]
        weights_dir = home / "checkpoints" / tc_a.model_id / "weights"
        save_futures = [tc_a.save_state(f"bulk-{i}") for i in range(400)]
        caught: list[str] = []
        deadline = time.monotonic() + 60
        while not caught and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                caught = [n for n in os.listdir(weights_dir) if ".tmp-" in n]
        workers = kill_all(proc)
        assert workers, "no engine worker was running"
        assert caught, "no save was caught writing (the saves all finished before the kill)"

    # Killed: the database is sound; the killed save left its temporary folder behind.
    assert integrity(home / "tinker.db") == "ok"
    leftovers = hidden_under(home / "checkpoints")
    assert leftovers, "the save in progress left nothing to clean up"
    assert any(n.startswith(".bulk-") and ".tmp-" in n for n in (p.name for p in leftovers))

    with server_process(home, port):
        log = (home / "server.log").read_text()
        assert "removed" in log and "half-written or half-deleted checkpoint folder" in log
        assert hidden_under(home / "checkpoints") == []
        assert integrity(home / "tinker.db") == "ok"

        # The futures in flight resolve to an error naming the restart, never pending forever:
        # the SDK's polling (it kept retrying through the outage) and a raw retrieve_future.
        outcomes = [_outcome(fut) for fut in fb_futures]
        assert "failed" in outcomes, outcomes  # the queue of b was still in flight at the kill
        polled = httpx.post(
            f"{url}/api/v1/retrieve_future", headers={"X-API-Key": keys[1]}, json={"request_id": raw_request}
        )
        assert polled.status_code == 200, polled.text
        assert RESTART in polled.json()["error"] and polled.json()["category"] == "server"
        saves = [_outcome(fut) for fut in save_futures]
        finished = saves.count("done")
        assert "failed" in saves  # the save that was writing, at least

        # Everything listed before is listed again (runs, checkpoints, public flag, sessions);
        # the saves that finished before the kill are listed too, and only those.
        after = (listing(rest_a, runs_a), listing(rest_b, runs_b))
        assert after[1] == before[1]
        assert after[0]["runs"] == before[0]["runs"] and after[0]["sessions"] == before[0]["sessions"]
        ckpts = after[0]["checkpoints"][tc_a.model_id]
        assert set(before[0]["checkpoints"][tc_a.model_id]) <= set(ckpts)
        bulk = [p for p, _ in ckpts if "/bulk-" in p]
        assert len(bulk) == finished, (len(bulk), finished)
        # Every listed checkpoint is whole on disk, and every folder on disk is listed.
        on_disk = set()
        for run_id, items in (*after[0]["checkpoints"].items(), *after[1]["checkpoints"].items()):
            for tinker_path, _ in items:
                kind, name = tinker_path.split("/")[-2:]
                folder = home / "checkpoints" / run_id / kind / name
                assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
                on_disk.add(folder)
        folders = {p for p in (home / "checkpoints").glob("*/*/*") if p.is_dir()}
        assert folders == on_disk

        # The old clients' runs are gone from the engine and say how to resume.
        with pytest.raises(tinker.TinkerError, match="create_training_client_from_state"):
            tc_b.forward(DATA, "cross_entropy").result(timeout=60)
        # Resume from the last saved state: the same weights (equal forward losses), and on.
        sc_a2 = tinker.ServiceClient(base_url=url, api_key=keys[0], _timings=TIMINGS)
        sc_b2 = tinker.ServiceClient(base_url=url, api_key=keys[1], _timings=TIMINGS)
        resumed_a = sc_a2.create_training_client_from_state(saved_a)
        resumed_b = sc_b2.create_training_client_from_state_with_optimizer(saved_b)
        assert loss(resumed_a) == pytest.approx(loss_a, rel=1e-6, abs=1e-6)
        assert loss(resumed_b) == pytest.approx(loss_b, rel=1e-6, abs=1e-6)
        train(resumed_b, 1)
        assert loss(resumed_b) < loss_b
        # The sampler made before the crash (a published checkpoint) samples the same again.
        assert sampler.sample(prompt, 1, greedy).result(timeout=60).sequences[0].tokens == tokens_before
        # Tenant b still cannot see tenant a's runs.
        assert tc_a.model_id not in {r.training_run_id for r in rest_b.list_training_runs().result().training_runs}
        for client in (sc_a, sc_b, sc_a2, sc_b2):
            client.holder.close()


def test_a_retried_submit_after_a_dropped_connection_is_applied_once(tmp_path: Path) -> None:
    """The same forward_backward + optim_step, each sent on a connection dropped before the answer
    and then again with the same seq_ids, train a run exactly like one sent once."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = "retry-tenant"
    headers = {"X-API-Key": key}
    with server_process(home, port):
        http = httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=60)

        def result(path: str, body: dict[str, Any]) -> Any:
            response = http.post(path, json=body)
            assert response.status_code == 200, response.text
            request_id = response.json()["request_id"]
            while True:
                polled = http.post("retrieve_future", json={"request_id": request_id})
                if polled.status_code == 200:
                    out = polled.json()
                    assert "error" not in out, out
                    return out
                assert polled.status_code == 408, polled.text

        session = http.post("create_session", json={"tags": [], "user_metadata": None, "sdk_version": "0.5.1"})
        sid = session.json()["session_id"]
        lora = {"rank": 8, "seed": 11, "train_unembed": True, "train_mlp": True, "train_attn": True}
        runs = [
            result(
                "create_model",
                {
                    "session_id": sid,
                    "model_seq_id": i,
                    "base_model": TINY_MODEL,
                    "user_metadata": None,
                    "lora_config": lora,
                },
            )["model_id"]
            for i in range(2)
        ]
        tokens = [(5 * i + 1) % 500 for i in range(20)]
        data = [
            {
                "model_input": {"chunks": [{"type": "encoded_text", "tokens": tokens[:-1]}]},
                "loss_fn_inputs": {"target_tokens": {"data": tokens[1:], "dtype": "int64", "shape": [19]}},
            }
        ]

        def fb(run: str, seq: int, key: str = "forward_backward_input") -> dict[str, Any]:
            return {
                "model_id": run,
                "seq_id": seq,
                key: {"data": data, "loss_fn": "cross_entropy", "loss_fn_config": None},
            }

        def optim(run: str, seq: int) -> dict[str, Any]:
            return {"model_id": run, "seq_id": seq, "adam_params": {"learning_rate": 0.05}}

        once, twice = runs
        for step in range(2):
            seq = 1 + 2 * step
            result("forward_backward", fb(once, seq))
            result("optim_step", optim(once, seq + 1))
            raw_submit_then_drop(port, "forward_backward", key, fb(twice, seq))
            raw_submit_then_drop(port, "optim_step", key, optim(twice, seq + 1))
            recorded(home / "tinker.db", twice, seq + 1)  # the server took the dropped submits
            result("forward_backward", fb(twice, seq))  # the retries: the same futures, not applied again
            result("optim_step", optim(twice, seq + 1))
        losses = [result("forward", fb(run, 5, "forward_input"))["metrics"]["loss:sum"] for run in (once, twice)]
        con = sqlite3.connect(home / "tinker.db")
        counts = [con.execute("SELECT count(*) FROM requests WHERE model_id = ?", (run,)).fetchone()[0] for run in runs]
        con.close()
        assert counts[0] == counts[1] == 6  # create_model, 2 x (forward_backward, optim_step), forward
        assert losses[0] == losses[1]
        # ... and the weights did move (two optim steps), so an extra step would have shown.
        fresh = result(
            "create_model",
            {
                "session_id": sid,
                "model_seq_id": 2,
                "base_model": TINY_MODEL,
                "user_metadata": None,
                "lora_config": lora,
            },
        )["model_id"]
        assert result("forward", fb(fresh, 1, "forward_input"))["metrics"]["loss:sum"] > losses[0] + 1e-3
        http.close()

"""Load on loopback with the tiny model (issue 11): 50 concurrent clients over 5 API keys train
and sample against a real ``python -m tinker_server`` for ``LOAD_S`` seconds.

Each client has its own session and LoRA run and loops: forward_backward, optim_step, and every
third step an ephemeral sampler snapshot and a sample from it, waiting for each future
(``retrieve_future`` long polls). 429 (backpressure) is retried after its ``Retry-After``;
any other error fails the test. Meanwhile a probe calls ``GET /get_server_capabilities`` every
20 ms. Checked: zero 5xx; every future resolves (none lost or stuck once the load stops);
the server's and its engine worker's memory (RSS) grows by less than ``RSS_GROWTH_MIB``. The
figures are printed (BENCHMARKS.md keeps a run of them).
"""

from __future__ import annotations

import functools
import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tinker_server.engine import TINY_MODEL
from tinker_server.launch import free_port

from .test_crash_restart import children, server_process

pytestmark = pytest.mark.slow

CLIENTS = 50
KEYS = 5
LOAD_S = float(os.environ.get("TINKER_LOAD_TEST_S", "60"))
RSS_GROWTH_MIB = 400


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[str] = []
        self.other_errors: list[str] = []
        self.futures_submitted = 0
        self.futures_resolved = 0
        self.steps = 0
        self.samples = 0

    def status(self, what: str, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[response.status_code] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{what}: {response.status_code} {response.text[:200]}")


class Client:
    """One simulated client: raw HTTP, its own session and run, one future at a time."""

    def __init__(self, url: str, key: str, stats: Stats, stop: threading.Event) -> None:
        self.http = httpx.Client(base_url=f"{url}/api/v1", headers={"X-API-Key": key}, timeout=60)
        self.stats = stats
        self.stop = stop
        self.seq = 0
        self.sampler_seq = 0

    def post(self, path: str, body: dict[str, Any]) -> Any:
        while True:
            response = self.http.post(path, json=body)
            self.stats.status(path, response)
            if response.status_code == 429:
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code != 200:
                raise AssertionError(f"{path}: {response.status_code} {response.text[:300]}")
            return response.json()

    def result(self, path: str, body: dict[str, Any]) -> Any:
        request_id = self.post(path, body)["request_id"]
        with self.stats.lock:
            self.stats.futures_submitted += 1
        deadline = time.monotonic() + 120
        while True:
            response = self.http.post("retrieve_future", json={"request_id": request_id})
            self.stats.status("retrieve_future", response)
            if response.status_code == 200:
                out = response.json()
                assert "error" not in out, out
                with self.stats.lock:
                    self.stats.futures_resolved += 1
                return out
            assert response.status_code == 408, response.text
            assert time.monotonic() < deadline, f"future {request_id} stuck for 120 s"

    def run(self, index: int) -> None:
        session = self.post("create_session", {"tags": ["load"], "user_metadata": None, "sdk_version": "0.5.1"})
        sid = session["session_id"]
        lora = {"rank": 4 + index % 4 * 4, "seed": index, "train_unembed": True, "train_mlp": True, "train_attn": True}
        body = {"session_id": sid, "model_seq_id": 0, "base_model": TINY_MODEL, "user_metadata": None}
        model_id = self.result("create_model", {**body, "lora_config": lora})["model_id"]
        rng = np.random.default_rng(index)
        step = 0
        while not self.stop.is_set():
            tokens = rng.integers(1, 500, 17).tolist()
            datum = {
                "model_input": {"chunks": [{"type": "encoded_text", "tokens": tokens[:-1]}]},
                "loss_fn_inputs": {"target_tokens": {"data": tokens[1:], "dtype": "int64", "shape": [16]}},
            }
            self.seq += 1
            fb = {"data": [datum], "loss_fn": "cross_entropy", "loss_fn_config": None}
            self.result("forward_backward", {"model_id": model_id, "seq_id": self.seq, "forward_backward_input": fb})
            self.seq += 1
            adam = {"learning_rate": 1e-3}
            self.result("optim_step", {"model_id": model_id, "seq_id": self.seq, "adam_params": adam})
            with self.stats.lock:
                self.stats.steps += 1
            step += 1
            if step % 3 == 0:
                self.seq += 1
                snap = {"model_id": model_id, "sampling_session_seq_id": self.sampler_seq, "seq_id": self.seq}
                sampler = self.result("save_weights_for_sampler", snap)["sampling_session_id"]
                self.sampler_seq += 1
                sample = {
                    "num_samples": 2,
                    "prompt": {"chunks": [{"type": "encoded_text", "tokens": tokens[:6]}]},
                    "sampling_params": {"max_tokens": 8, "temperature": 1.0, "seed": step},
                    "sampling_session_id": sampler,
                    "seq_id": 0,
                }
                assert len(self.result("asample", sample)["sequences"]) == 2
                with self.stats.lock:
                    self.stats.samples += 1


def guarded(fn: Callable[[], None], errors: list[str]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"{type(exc).__name__}: {exc}")

    return run


def test_fifty_clients_over_five_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process(home, port) as proc:
        warm = httpx.post(
            f"{url}/api/v1/create_session",
            headers={"X-API-Key": "warm"},
            json={"tags": [], "user_metadata": None, "sdk_version": "0.5.1"},
        )
        assert warm.status_code == 200
        stats, stop = Stats(), threading.Event()
        errors: list[str] = []
        clients = [Client(url, f"load-key-{i % KEYS}", stats, stop) for i in range(CLIENTS)]
        # Warm up: the model loads on the first create_model; then memory is measured.
        first = Client(url, "load-key-warmup", stats, threading.Event())
        first.stop.set()
        first.run(999)
        first.http.close()
        workers = children(proc.pid)
        assert workers, "no engine worker"
        rss_before = rss_mib(proc.pid) + sum(rss_mib(w) for w in workers)

        latencies: list[float] = []
        probe_http = httpx.Client(base_url=f"{url}/api/v1", headers={"X-API-Key": "load-probe"}, timeout=30)

        def probe() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                response = probe_http.get("get_server_capabilities")
                latencies.append(time.perf_counter() - start)
                stats.status("get_server_capabilities", response)
                assert response.status_code == 200
                time.sleep(0.02)

        threads = [threading.Thread(target=guarded(probe, errors), name="probe")]
        threads += [
            threading.Thread(target=guarded(functools.partial(c.run, i), errors), name=f"client-{i}")
            for i, c in enumerate(clients)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(LOAD_S)
        stop.set()
        for t in threads:  # every client finishes its last future: none lost or stuck
            t.join(timeout=150)
        elapsed = time.monotonic() - started
        stuck = [t.name for t in threads if t.is_alive()]
        rss_after = rss_mib(proc.pid) + sum(rss_mib(w) for w in children(proc.pid))
        p = np.percentile(np.asarray(latencies) * 1000, [50, 99]) if latencies else [float("nan")] * 2
        with capsys.disabled():
            print(
                f"\nload: {CLIENTS} clients / {KEYS} keys for {LOAD_S:.0f} s (drained after {elapsed:.0f} s) on "
                f"{cpu_model()}, {os.cpu_count()} CPUs: {stats.steps} training steps ({stats.steps / elapsed:.1f}/s), "
                f"{stats.samples} samples, {stats.futures_submitted} futures ({stats.futures_resolved} resolved), "
                f"HTTP statuses {dict(sorted(stats.statuses.items()))}; get_server_capabilities under load: "
                f"p50 {p[0]:.1f} ms, p99 {p[1]:.1f} ms over {len(latencies)} calls; RSS server+worker "
                f"{rss_before:.0f} -> {rss_after:.0f} MiB"
            )
        for client in clients:
            client.http.close()
        probe_http.close()
    assert not stuck, stuck
    assert not errors, errors[:5]
    assert not stats.server_errors, stats.server_errors[:5]
    assert stats.futures_resolved == stats.futures_submitted
    assert stats.steps >= CLIENTS and stats.samples >= 1
    assert rss_after - rss_before < RSS_GROWTH_MIB, (rss_before, rss_after)

"""Overhead of the API path for the OFFICIAL tinker clients: the same SFT step through
an official client + HTTP + server vs the engine in-process.

The official clients cannot be imported next to this project's ``tinker`` package, so
each runs in its own virtualenv, in a long-lived worker (bench/official_client_worker.py)
that runs one training step per command. This process holds the engine for the direct
steps and drives the worker; ``tinker serve`` runs in a third process with its own copy
of the model. Direct and API steps alternate strictly (direct, API, direct, ...), as in
bench/sft_overhead.py, so drift in the machine's speed hits both alike and no two steps
overlap. Both sides train a fresh LoRA adapter of the same rank and seed on the same
token batch, with the same loss and optimizer, so their losses must agree step by step.

    python bench/official_overhead.py [--home DIR] [--steps 10] \
        [--client 0.38=.venv-compat38/bin/python --client 0.5.1=.venv-compat/bin/python]

0.38 sends forward_backward as protobuf and takes protobuf results; 0.5.1 speaks JSON.
Prints per client: total and median step time of each side, their ratio (target <= 1.10),
the CPU seconds each process spent per step, and the largest difference between the two
sides' losses; step times go to stderr as they come. Also prints the machine and its load
average, since the figures mean little on a busy machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sft_overhead import Rows, batch  # the same token batch as the in-SDK benchmark

from tinker_server import engine as eng
from tinker_server.launch import background_server

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "official_client_worker.py"
DEFAULT_CLIENTS = ["0.38=.venv-compat38/bin/python", "0.5.1=.venv-compat/bin/python"]


@dataclass
class Result:
    """Step times (seconds) and losses of one client's alternating run."""

    client: str
    version: str = ""
    direct: list[float] = field(default_factory=list)
    api: list[float] = field(default_factory=list)
    direct_loss: list[float] = field(default_factory=list)
    api_loss: list[float] = field(default_factory=list)
    direct_cpu: list[float] = field(default_factory=list)  # CPU seconds of this process
    server_cpu: list[float] = field(default_factory=list)  # CPU seconds of the server process
    client_cpu: list[float] = field(default_factory=list)  # CPU seconds of the client worker


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid() -> int:
    """The ``tinker_server`` process that background_server started from this process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == os.getpid() and b"tinker_server" in cmdline:
            return int(entry.name)
    raise RuntimeError("no tinker_server child process found")


def direct_step(engine: eng.Engine, adapter: str, rows: Rows, rank: int) -> Callable[[], float]:
    """A fresh adapter (seed 0) in ``engine``; the returned step gives its loss:sum."""
    engine.create_adapter(adapter, eng.LoraSpec(rank=rank, seed=0))
    data = [
        eng.TrainDatum(
            tokens=t, loss_fn_inputs={"target_tokens": np.array(y), "weights": np.array(w, dtype=np.float32)}
        )
        for t, y, w in rows
    ]
    engine.forward_backward(adapter, data, "cross_entropy", None, backward=False)  # warm-up

    def step() -> float:
        out = engine.forward_backward(adapter, data, "cross_entropy", None, backward=True)
        engine.optim_step(adapter, eng.AdamConfig(learning_rate=1e-4))
        return out.metrics["loss:sum"]

    return step


class Worker:
    """bench/official_client_worker.py in a client's virtualenv, one command at a time."""

    def __init__(self, python: str, url: str, model: str, rank: int, batch_path: Path) -> None:
        self._proc = subprocess.Popen(
            [python, str(WORKER), url, model, str(rank), str(batch_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self._proc.pid
        self.version = self._read("ready ").removeprefix("ready ")

    def _read(self, prefix: str) -> str:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith(prefix):
                return line.strip()
            sys.stderr.write(f"[worker] {line}")  # anything else the client prints
        raise RuntimeError(f"the client worker exited with code {self._proc.wait()}")

    def step(self) -> tuple[float, float]:
        """(seconds, loss:sum) of one forward_backward + optim_step, timed by the client."""
        assert self._proc.stdin is not None
        self._proc.stdin.write("step\n")
        self._proc.stdin.flush()
        reply = json.loads(self._read("{"))
        return reply["seconds"], reply["loss"]

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.write("quit\n")
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def run_client(
    spec: str, url: str, args: argparse.Namespace, engine: eng.Engine, rows: Rows, batch_path: Path
) -> Result:
    name, python = spec.split("=", 1)
    result = Result(client=name)
    direct = direct_step(engine, f"bench-{name}", rows, args.rank)
    worker = Worker(str(ROOT / python), url, args.model, args.rank, batch_path)  # an absolute python stays as is
    result.version = worker.version
    server = server_pid()
    try:
        for _ in range(args.steps):
            cpu, start = time.process_time(), time.perf_counter()
            result.direct_loss.append(direct())
            result.direct.append(time.perf_counter() - start)
            result.direct_cpu.append(time.process_time() - cpu)
            server_cpu, client_cpu = cpu_seconds(server), cpu_seconds(worker.pid)
            seconds, loss = worker.step()
            result.server_cpu.append(cpu_seconds(server) - server_cpu)
            result.client_cpu.append(cpu_seconds(worker.pid) - client_cpu)
            result.api.append(seconds)
            result.api_loss.append(loss)
            step = len(result.api)
            print(f"{name} step {step}: direct {result.direct[-1]:.2f} s, API {seconds:.2f} s", file=sys.stderr)
    finally:
        worker.close()
        engine.drop_adapter(f"bench-{name}")
    return result


def machine() -> str:
    def first(path: str, key: str) -> str:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), "?")

    ram_gib = int(first("/proc/meminfo", "MemTotal").split()[0]) / 2**20
    return (
        f"{first('/proc/cpuinfo', 'model name')}, {os.cpu_count()} logical cores, {ram_gib:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads on both sides), {datetime.date.today()}"
    )


def report(results: list[Result], args: argparse.Namespace, load_before: float) -> None:
    print(f"machine: {machine()}")
    print(f"load average (1 min) before the run {load_before:.1f}, after {os.getloadavg()[0]:.1f}")
    shape = f"{args.batch}x{args.length} tokens, LoRA rank {args.rank}"
    print(f"model {args.model}, {args.steps} alternating steps of {shape}")
    for r in results:
        print(f"official tinker {r.version} ({r.client}):")
        for name, times in (("direct engine", r.direct), ("client+HTTP+server", r.api)):
            print(f"  {name:18s}: total {sum(times):7.2f} s, median step {statistics.median(times) * 1000:6.0f} ms")
        print(
            f"  overhead ratio: total {sum(r.api) / sum(r.direct):.3f}, "
            f"median {statistics.median(r.api) / statistics.median(r.direct):.3f}  (target <= 1.10)"
        )
        print(
            f"  CPU seconds per step (median): direct {statistics.median(r.direct_cpu):.2f}; API: server "
            f"{statistics.median(r.server_cpu):.2f} + client {statistics.median(r.client_cpu):.2f}"
        )
        diff = max(abs(a - d) / abs(d) for a, d in zip(r.api_loss, r.direct_loss, strict=True))
        print(
            f"  loss:sum {r.direct_loss[0]:.3f} -> {r.direct_loss[-1]:.3f}; "
            f"largest relative difference API vs direct {diff:.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=eng.DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides")
    parser.add_argument("--client", action="append", help="NAME=PYTHON of a virtualenv with an official client")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("TINKER_HOME", Path.home() / ".tinker")))
    args = parser.parse_args()
    clients = args.client or DEFAULT_CLIENTS
    for spec in clients:
        if "=" not in spec or not (ROOT / spec.split("=", 1)[1]).exists():
            raise SystemExit(
                f"--client {spec}: expected NAME=PYTHON of an existing virtualenv "
                "(make .venv-compat38/.installed .venv-compat/.installed builds the default ones)"
            )

    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    engine = eng.load_engine(args.model, home=args.home)  # also converts and caches the model once
    rows = batch(engine.info.vocab_size, args.batch, args.length)
    with tempfile.TemporaryDirectory() as tmp:
        batch_path = Path(tmp) / "batch.json"
        batch_path.write_text(json.dumps(rows))
        home = Path(tmp) / "home"
        home.mkdir()
        (home / "models").symlink_to(args.home.absolute() / "models")  # reuse the converted model
        env = {"TINKER_TORCH_THREADS": str(args.threads)}
        with background_server(home, [args.model], timeout=300, env=env) as url:
            results = [run_client(spec, url, args, engine, rows, batch_path) for spec in clients]
    report(results, args, load_before)


if __name__ == "__main__":
    main()

"""Overhead of the API path: the same SFT step through SDK + HTTP + server vs the engine in-process.

One process holds both: the engine called directly (forward_backward + optim_step
in this process) and the public ``tinker`` SDK against ``tinker serve`` running on
a loopback port. The two kinds of step alternate (direct, API, direct, API, ...),
so drift in the machine's speed hits both alike. Prints total and median step
times, their ratio (target <= 1.10), and the round-trip latency of a trivial
request (``get_info``; target p50 <= 5 ms on loopback).

    python bench/sft_overhead.py [--model HuggingFaceTB/SmolLM2-135M-Instruct] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import tinker
from tinker import types
from tinker_server import engine as eng
from tinker_server.launch import background_server

Rows = list[tuple[list[int], list[int], list[float]]]


def batch(vocab: int, n: int, length: int, seed: int = 0) -> Rows:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = rng.integers(5, vocab - 1, size=length + 1).tolist()
        out.append((toks[:-1], toks[1:], [1.0] * length))
    return out


def direct_step(engine: eng.Engine, rows: Rows, rank: int) -> Callable[[], None]:
    engine.create_adapter("bench", eng.LoraSpec(rank=rank, seed=0))
    data = [
        eng.TrainDatum(
            tokens=t, loss_fn_inputs={"target_tokens": np.array(y), "weights": np.array(w, dtype=np.float32)}
        )
        for t, y, w in rows
    ]
    engine.forward_backward("bench", data, "cross_entropy", None, backward=False)  # warm-up

    def step() -> None:
        engine.forward_backward("bench", data, "cross_entropy", None, backward=True)
        engine.optim_step("bench", eng.AdamConfig(learning_rate=1e-4))

    return step


def api_step(tc: tinker.TrainingClient, rows: Rows) -> Callable[[], None]:
    data = [
        # lists, as a client sends them: Datum converts them to TensorData (a before-validator)
        types.Datum(model_input=types.ModelInput.from_ints(t), loss_fn_inputs={"target_tokens": y, "weights": w})  # type: ignore[dict-item]
        for t, y, w in rows
    ]
    tc.forward(data, "cross_entropy").result()  # warm-up (loads the base model into the server's worker)

    def step() -> None:
        fb = tc.forward_backward(data, "cross_entropy")
        op = tc.optim_step(types.AdamParams(learning_rate=1e-4))
        fb.result()
        op.result()

    return step


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=eng.DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("TINKER_HOME", Path.home() / ".tinker")))
    args = parser.parse_args()

    engine = eng.load_engine(args.model, home=args.home)  # also converts and caches the model once
    rows = batch(engine.info.vocab_size, args.batch, args.length)
    direct = direct_step(engine, rows, args.rank)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models").symlink_to(args.home / "models")  # reuse the converted model; runs stay out of home
        with background_server(Path(tmp), [args.model], timeout=300) as url:
            sc = tinker.ServiceClient(base_url=url, api_key="tml-bench")
            tc = sc.create_lora_training_client(base_model=args.model, rank=args.rank, seed=0)
            api = api_step(tc, rows)
            direct_times, api_times = [], []
            for _ in range(args.steps):
                direct_times.append(timed(direct))
                api_times.append(timed(api))
            latencies = sorted(timed(tc.get_info) * 1000 for _ in range(200))

    torch_threads = __import__("torch").get_num_threads()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, torch threads {torch_threads}"
    )
    print(
        f"model {args.model}, {args.steps} alternating steps of {args.batch}x{args.length} tokens, "
        f"LoRA rank {args.rank}"
    )
    for name, times in (("direct engine", direct_times), ("SDK+HTTP+server", api_times)):
        print(f"{name:16s}: total {sum(times):7.2f} s, median step {statistics.median(times) * 1000:6.0f} ms")
    print(
        f"overhead ratio: total {sum(api_times) / sum(direct_times):.3f}, "
        f"median {statistics.median(api_times) / statistics.median(direct_times):.3f}  (target <= 1.10)"
    )
    print(
        f"get_info round trip: p50 {statistics.median(latencies):.2f} ms, "
        f"p90 {latencies[int(len(latencies) * 0.9)]:.2f} ms  (target p50 <= 5 ms)"
    )


if __name__ == "__main__":
    main()

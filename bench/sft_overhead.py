"""Overhead of the API path: the same SFT loop through SDK + HTTP + server vs the engine in-process.

Runs a 10-step LoRA SFT loop (8 sequences x 128 tokens, rank 16) twice in one
process on the same machine:

1. *direct*: ``tinker_server.engine`` called in-process (forward_backward + optim_step);
2. *api*: the public ``tinker`` SDK against ``tinker serve`` on a loopback port.

It prints both wall times, their ratio (target <= 1.10) and the round-trip
latency of a trivial request (``get_info``; target p50 <= 5 ms on loopback).

    python bench/sft_overhead.py [--model HuggingFaceTB/SmolLM2-135M-Instruct] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import tinker
from tinker import types
from tinker_server import engine as eng
from tinker_server.launch import background_server


def batch(vocab: int, n: int, length: int, seed: int = 0) -> list[tuple[list[int], list[int], list[float]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = rng.integers(5, vocab - 1, size=length + 1).tolist()
        out.append((toks[:-1], toks[1:], [1.0] * length))
    return out


def run_direct(model: str, home: Path, rows, steps: int, rank: int) -> float:
    engine = eng.load_engine(model, home=home)
    engine.create_adapter("bench", eng.LoraSpec(rank=rank, seed=0))
    data = [
        eng.TrainDatum(tokens=t, loss_fn_inputs={"target_tokens": np.array(y), "weights": np.array(w, dtype=np.float32)})
        for t, y, w in rows
    ]
    engine.forward_backward("bench", data, "cross_entropy", None, backward=False)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        engine.forward_backward("bench", data, "cross_entropy", None, backward=True)
        engine.optim_step("bench", eng.AdamConfig(learning_rate=1e-4))
    return time.perf_counter() - start


def run_api(url: str, model: str, rows, steps: int, rank: int) -> tuple[float, list[float]]:
    sc = tinker.ServiceClient(base_url=url, api_key="bench")
    tc = sc.create_lora_training_client(base_model=model, rank=rank, seed=0)
    data = [
        types.Datum(model_input=types.ModelInput.from_ints(t), loss_fn_inputs={"target_tokens": y, "weights": w})
        for t, y, w in rows
    ]
    tc.forward(data, "cross_entropy").result()  # warm-up (loads the model's weights into the worker)
    start = time.perf_counter()
    for _ in range(steps):
        fb = tc.forward_backward(data, "cross_entropy")
        op = tc.optim_step(types.AdamParams(learning_rate=1e-4))
        fb.result()
        op.result()
    elapsed = time.perf_counter() - start
    latencies = []
    for _ in range(200):
        t = time.perf_counter()
        tc.get_info()
        latencies.append((time.perf_counter() - t) * 1000)
    return elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=eng.DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("TINKER_HOME", Path.home() / ".tinker")))
    args = parser.parse_args()

    probe = eng.load_engine(args.model, home=args.home)  # also converts/caches the model once
    rows = batch(probe.info.vocab_size, args.batch, args.length)
    del probe

    direct = run_direct(args.model, args.home, rows, args.steps, args.rank)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.symlink_to(args.home / "models")  # reuse the converted model, keep runs out of the user's home
        with background_server(Path(tmp), [args.model], timeout=300) as url:
            api, lat = run_api(url, args.model, rows, args.steps, args.rank)

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}, torch threads {__import__('torch').get_num_threads()}")
    print(f"model {args.model}, {args.steps} steps of {args.batch}x{args.length} tokens, LoRA rank {args.rank}")
    print(f"direct engine : {direct:7.2f} s  ({direct / args.steps * 1000:.0f} ms/step)")
    print(f"SDK+HTTP+server: {api:7.2f} s  ({api / args.steps * 1000:.0f} ms/step)")
    print(f"overhead ratio: {api / direct:.3f}  (target <= 1.10)")
    lat.sort()
    print(f"get_info round trip: p50 {statistics.median(lat):.2f} ms, p90 {lat[int(len(lat) * 0.9)]:.2f} ms (target p50 <= 5 ms)")


if __name__ == "__main__":
    main()

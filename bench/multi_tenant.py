"""Several tenants training their own adapters: batched in one engine round vs time-sliced.

    python bench/multi_tenant.py [--home DIR] [--rounds 3] [--threads 0]

Four adapters of ranks 8, 16, 24 and 32 (one per tenant) on SmolLM2-135M-Instruct. Per
round, through the same ``EngineHost`` the server's worker process runs:

* batched: one round with the four tenants' ``ForwardBackward`` commands (one pass through
  the base model, as the scheduler sends the heads of several runs' queues), then their
  four ``OptimStep`` commands;
* time-sliced: each tenant's ``ForwardBackward`` + ``OptimStep`` alone, one after another.

Two regimes: underfilled (1 x 128 tokens per request) and saturated (8 x 512). The two
modes alternate round by round after a warm-up round. Prints aggregate trained tokens/s,
each tenant's tokens/s, and the ratio batched / time-sliced (> 1: batching gains).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import torch
from sampling import machine_info

from tinker_server.engine import DEFAULT_MODEL, AdamConfig, LoraSpec, TrainDatum
from tinker_server.engine.api import Command, CreateAdapter, ForwardBackward, OptimStep
from tinker_server.engine.host import EngineHost
from tinker_server.engine.process import WorkerSpec
from tinker_server.engine.worker import load_host

RANKS = (8, 16, 24, 32)
REGIMES = {"underfilled 1x128": (1, 128), "saturated 8x512": (8, 512)}


def _run(host: EngineHost, commands: list[Command]) -> None:
    bad = [o for o in host.run(commands).outcomes if isinstance(o, BaseException)]
    if bad:
        raise RuntimeError(f"a command failed: {bad[0]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--home",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("TINKER_HOME", pathlib.Path.home() / ".tinker")),
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per mode and regime (after a warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    host = load_host(WorkerSpec(model_name=args.model, home=str(args.home)))
    tenants = [f"tenant{i}" for i in range(len(RANKS))]
    for name, rank in zip(tenants, RANKS, strict=True):
        _run(host, [CreateAdapter(name, LoraSpec(rank=rank, seed=rank))])
    adam = AdamConfig(learning_rate=1e-5)
    rng = np.random.default_rng(0)
    vocab = host.info.vocab_size
    lines = []
    for regime, (batch, length) in REGIMES.items():
        data = {}
        for name in tenants:
            tokens = rng.integers(0, vocab, size=(batch, length))
            data[name] = [
                TrainDatum(tokens=row.tolist(), loss_fn_inputs={"target_tokens": np.roll(row, -1)}) for row in tokens
            ]

        def batched(data: dict[str, list[TrainDatum]] = data) -> dict[str, float]:
            start = time.perf_counter()
            _run(host, [ForwardBackward(n, data[n], "cross_entropy") for n in tenants])
            _run(host, [OptimStep(n, adam) for n in tenants])
            elapsed = time.perf_counter() - start
            return dict.fromkeys(tenants, elapsed)  # every tenant's step ends with the round

        def sliced(data: dict[str, list[TrainDatum]] = data) -> dict[str, float]:
            start = time.perf_counter()
            done = {}
            for n in tenants:
                _run(host, [ForwardBackward(n, data[n], "cross_entropy")])
                _run(host, [OptimStep(n, adam)])
                done[n] = time.perf_counter() - start
            return done

        timings: dict[str, list[dict[str, float]]] = {"batched": [], "time-sliced": []}
        for round_ in range(args.rounds + 1):
            order = [("batched", batched), ("time-sliced", sliced)]
            for mode, fn in order if round_ % 2 == 0 else order[::-1]:
                result = fn()
                if round_:
                    timings[mode].append(result)
        tokens_per_tenant = batch * length
        row = {}
        for mode, runs in timings.items():
            total = statistics.median(max(r.values()) for r in runs)
            shares = {n: tokens_per_tenant / statistics.median(r[n] for r in runs) for n in tenants}
            row[mode] = (len(tenants) * tokens_per_tenant / total, shares)
        ratio = row["batched"][0] / row["time-sliced"][0]
        lines.append(
            f"{regime:<20} batched {row['batched'][0]:8.0f} tok/s   time-sliced {row['time-sliced'][0]:8.0f} "
            f"tok/s   batched / time-sliced {ratio:.3f}"
        )
        for mode, (_, shares) in row.items():
            lo, hi = min(shares.values()), max(shares.values())
            lines.append(
                f"{'':<20} {mode:<12} per tenant (tok/s, in finishing terms): "
                + ", ".join(f"r{rank} {shares[n]:.0f}" for n, rank in zip(tenants, RANKS, strict=True))
                + f"  (max/min {hi / lo:.2f})"
            )
    print("\n".join(machine_info("cpu", load_before)))
    print(f"model   : {args.model}, LoRA ranks {RANKS}, {args.rounds} rounds per mode, alternating")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

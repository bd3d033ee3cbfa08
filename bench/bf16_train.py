"""bf16 against fp32: one training step of the engine on CPU, side by side in one process.

    python bench/bf16_train.py [--home DIR] [--model NAME] [--steps 6] [--threads N]

SmolLM2-135M-Instruct loaded twice (float32 and bfloat16 base weights), a LoRA
rank-32 adapter on every linear layer (attention, MLP, lm_head; float32 master
weights and Adam state in both), 8 random sequences x 128 tokens, cross-entropy
``forward_backward`` + AdamW ``optim_step``. The two engines alternate step by step
after one warm-up step each, so drift in the machine's speed hits both alike; the
result is the median step time of each and the ratio fp32 / bf16 (> 1: bf16 faster).
Also prints the CPU's bf16 features (AVX512-BF16, AMX) and whether oneDNN packed the
bf16 weights. ``--home`` defaults to ``$TINKER_HOME`` (else ``~/.tinker``).
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

from tinker_server.engine import DEFAULT_MODEL, AdamConfig, LoraSpec, TrainDatum, load_engine


def cpu_bf16_features() -> str:
    try:
        flags = next(
            line for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("TINKER_HOME", pathlib.Path.home() / ".tinker")),
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per dtype (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)

    engines = {dtype: load_engine(args.model, home=args.home, dtype=dtype) for dtype in ("float32", "bfloat16")}
    rng = np.random.default_rng(0)
    vocab = engines["float32"].info.vocab_size
    data = []
    for _ in range(args.batch):
        ids = rng.integers(0, vocab, args.seq + 1)
        data.append(TrainDatum(tokens=ids[:-1].tolist(), loss_fn_inputs={"target_tokens": ids[1:]}))

    def step(dtype: str) -> float:
        engine = engines[dtype]
        start = time.perf_counter()
        engine.forward_backward("bench", data, "cross_entropy", None, backward=True)
        engine.optim_step("bench", AdamConfig(learning_rate=1e-4))
        return time.perf_counter() - start

    losses = {}
    for dtype, engine in engines.items():
        engine.create_adapter("bench", LoraSpec(rank=args.rank, seed=0, train_unembed=True))
        losses[dtype] = engine.forward_backward("bench", data, "cross_entropy", None, backward=False).metrics[
            "loss:sum"
        ]
        step(dtype)  # warm-up
    times: dict[str, list[float]] = {dtype: [] for dtype in engines}
    for _ in range(args.steps):
        for dtype in engines:
            times[dtype].append(step(dtype))

    print("\n".join(machine_info("cpu", load_before)))
    print(
        f"cpu bf16: {cpu_bf16_features()}; oneDNN bf16 supported: {bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}"
    )
    print(
        f"model   : {args.model}, LoRA r{args.rank} on all linear layers, {args.batch} x {args.seq} tokens, "
        f"forward_backward + optim_step; {args.steps} alternating steps per dtype after a warm-up"
    )
    med = {dtype: statistics.median(t) for dtype, t in times.items()}
    for dtype, t in times.items():
        print(
            f"  {dtype:9s} median {med[dtype]:.3f} s  (steps: {' '.join(f'{x:.2f}' for x in t)}); "
            f"packed layers {engines[dtype].packed_layers}; "
            f"initial loss/token {losses[dtype] / len(data) / args.seq:.4f}"
        )
    print(f"  ratio fp32 / bf16 step time: {med['float32'] / med['bfloat16']:.2f} (> 1: bf16 faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

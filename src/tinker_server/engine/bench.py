"""Engine benchmark: ``python -m tinker_server.engine.bench [--model NAME] ...``.

Measures, on the current machine: model load time, forward+backward+AdamW of a
``batch x seq`` cross-entropy step (LoRA on all linear layers), forward only,
and sampling ``samples x new_tokens``. Prints one JSON object; ``peak_rss_gb``
is the process's peak resident memory so far (run one phase per process to
attribute it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from . import DEFAULT_MODEL, AdamConfig, LoraSpec, SampleJob, TrainDatum, load_engine


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--home", type=pathlib.Path, default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--microbatch", type=int, default=2048, help="max tokens per micro-batch")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phases", default="train,forward,sample", help="comma-separated subset")
    parser.add_argument(
        "--checkpointing",
        choices=["auto", "on", "off"],
        default="auto",
        help="activation checkpointing (auto: for micro-batches over 1024 tokens)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    phases = set(args.phases.split(","))

    home = args.home or pathlib.Path(tempfile.gettempdir()) / "tinker-bench-home"
    import torch

    result: dict[str, object] = {
        "model": args.model,
        "dtype": args.dtype,
        "rank": args.rank,
        "threads": torch.get_num_threads(),
        "microbatch": args.microbatch,
        "checkpointing": args.checkpointing,
    }
    start = time.perf_counter()
    engine = load_engine(
        args.model,
        home=home,
        dtype=args.dtype,
        max_tokens_per_microbatch=args.microbatch,
        activation_checkpointing={"auto": None, "on": True, "off": False}[args.checkpointing],
    )
    result["load_s"] = round(time.perf_counter() - start, 3)
    result["load_source"] = engine.source
    engine.create_adapter("bench", LoraSpec(rank=args.rank, seed=0))

    rng = np.random.default_rng(0)
    vocab = engine.info.vocab_size
    data = []
    for _ in range(args.batch):
        tokens = rng.integers(0, vocab, args.seq + 1)
        data.append(
            TrainDatum(
                tokens=tokens[:-1].tolist(),
                loss_fn_inputs={"target_tokens": tokens[1:], "weights": np.ones(args.seq, np.float32)},
            )
        )
    label = f"{args.batch}x{args.seq}"
    if "train" in phases:

        def step() -> None:
            engine.forward_backward("bench", data, "cross_entropy", None, backward=True)
            engine.optim_step("bench", AdamConfig(learning_rate=1e-4))

        times = _timed(step, args.repeats)
        result[f"train_step_{label}_s"] = round(statistics.median(times), 3)
        result["train_step_all_s"] = [round(t, 3) for t in times]
    if "forward" in phases:
        times = _timed(
            lambda: engine.forward_backward("bench", data, "cross_entropy", None, backward=False), args.repeats
        )
        result[f"forward_{label}_s"] = round(statistics.median(times), 3)
    if "sample" in phases:
        prompt = rng.integers(0, vocab, 32).tolist()
        job = SampleJob("bench", prompt, num_samples=args.samples, max_tokens=args.new_tokens, seed=0)
        times = _timed(lambda: engine.sample([job]), args.repeats)
        result[f"sample_{args.samples}x{args.new_tokens}_s"] = round(statistics.median(times), 3)
    result["peak_rss_gb"] = round(_peak_rss_gb(), 2)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

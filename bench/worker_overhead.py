"""The engine in its worker process against the engine in this process, side by side.

    python bench/worker_overhead.py [--home DIR] [--model NAME] [--rounds 8] [--threads 1]

Both run the same typed commands (``tinker_server.engine.api``) on SmolLM2-135M-Instruct:
``ProcessEngine`` sends them to ``python -m tinker_server.engine.worker`` over its socket
(pickled commands and results), ``LocalEngine`` runs the same host in this process. Per
round, alternating between the two so drift in the machine's speed hits both alike:

* a training step: ``ForwardBackward`` of 8 sequences x 128 tokens (cross-entropy, LoRA
  rank 32 on every layer) then ``OptimStep``;
* a sampling batch: 8 prompts of 32 tokens, 32 new tokens each at temperature 1 (seeded);
* an optimizer step alone (``OptimStep``, no gradients accumulated);
* a round trip: ``DropAdapter`` of an absent adapter (no work: the boundary's fixed cost).

Prints the median of each and the ratio worker / in-process (1.00 = the boundary costs
nothing). Both engines use ``--threads`` torch threads (the worker through its spec).
``--home`` defaults to ``$TINKER_HOME`` (else ``~/.tinker``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from sampling import machine_info

from tinker_server.engine import DEFAULT_MODEL, AdamConfig, LoraSpec, SampleJob, TrainDatum
from tinker_server.engine.api import (
    Command,
    CreateAdapter,
    DropAdapter,
    EngineHandle,
    ForwardBackward,
    OptimStep,
    Sample,
)
from tinker_server.engine.host import LocalEngine
from tinker_server.engine.process import ProcessEngine, WorkerSpec
from tinker_server.engine.worker import load_host


def _timed(handle: EngineHandle, commands: list[Command]) -> float:
    start = time.perf_counter()
    report = handle.run(commands)
    elapsed = time.perf_counter() - start
    bad = [o for o in report.outcomes if isinstance(o, BaseException)]
    if bad:
        raise RuntimeError(f"a command failed: {bad[0]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--home",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("TINKER_HOME", pathlib.Path.home() / ".tinker")),
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of both engines")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    spec = WorkerSpec(model_name=args.model, home=str(args.home), torch_threads=args.threads)
    handles: dict[str, EngineHandle] = {
        "worker": ProcessEngine(spec),
        "in-process": LocalEngine(lambda: load_host(spec).core),
    }
    info = {name: h.start() for name, h in handles.items()}
    vocab = info["worker"].vocab_size
    rng = np.random.default_rng(0)
    data = []
    for _ in range(8):
        tokens = rng.integers(0, vocab, size=128)
        data.append(TrainDatum(tokens=tokens.tolist(), loss_fn_inputs={"target_tokens": np.roll(tokens, -1)}))
    prompts = [rng.integers(0, vocab, size=32).tolist() for _ in range(8)]
    spec_lora = LoraSpec(rank=32, seed=0)
    for handle in handles.values():
        handle.run([CreateAdapter("bench", spec_lora)])

    workloads: dict[str, Callable[[], list[Command]]] = {
        "training step": lambda: [
            ForwardBackward("bench", data, "cross_entropy", None, True),
            OptimStep("bench", AdamConfig(learning_rate=1e-4)),
        ],
        "sampling batch": lambda: [
            Sample(SampleJob("bench", p, max_tokens=32, temperature=1.0, seed=i)) for i, p in enumerate(prompts)
        ],
        "optimizer step": lambda: [OptimStep("bench", AdamConfig(learning_rate=0.0))],
        "round trip": lambda: [DropAdapter("absent")],
    }
    times: dict[str, dict[str, list[float]]] = {w: {h: [] for h in handles} for w in workloads}
    for round_ in range(args.rounds + 1):
        order = list(handles) if round_ % 2 == 0 else list(reversed(handles))
        for workload, commands in workloads.items():
            for name in order:
                elapsed = _timed(handles[name], commands())
                if round_ > 0:  # the first round warms both up
                    times[workload][name].append(elapsed)
    for handle in handles.values():
        handle.close()

    print("\n".join(machine_info("cpu", load_before)))
    print(f"model   : {args.model}, LoRA rank 32, {args.rounds} rounds, alternating, {args.threads} torch thread(s)")
    print(f"{'workload':<16} {'in-process':>12} {'worker':>12} {'worker / in-process':>22}")
    for workload, by_handle in times.items():
        local, remote = statistics.median(by_handle["in-process"]), statistics.median(by_handle["worker"])
        print(f"{workload:<16} {local * 1e3:>10.2f}ms {remote * 1e3:>10.2f}ms {remote / local:>22.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

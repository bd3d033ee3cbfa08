"""Training steps through an OFFICIAL tinker client, one per command: the API side of
bench/official_overhead.py.

Runs in the client's own virtualenv and imports nothing of this project. Usage::

    python official_client_worker.py BASE_URL MODEL RANK BATCH_JSON

``BATCH_JSON`` holds ``[[tokens, target_tokens, weights], ...]``. The worker creates a
LoRA training client (seed 0), runs one forward as a warm-up and prints ``ready``.
Then it reads commands on stdin, one a line, and answers each with one line on stdout:

* ``step``: forward_backward + optim_step, both submitted before either is awaited;
  answers ``{"seconds": wall time of the step, "loss": loss:sum}`` as JSON.
* ``quit``: ends the session and exits.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from typing import Any

import tinker
from tinker import types

VERSION = tuple(int(p) for p in version("tinker").split(".")[:2])


def resolved(obj: Any) -> Any:
    """0.38 creation methods return a future of the client; older ones the client."""
    result = getattr(obj, "result", None)
    return result() if callable(result) else obj


def answer(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def serve_commands(sc: Any, model: str, rank: int, rows: list[list[list[Any]]]) -> None:
    tc = resolved(sc.create_lora_training_client(base_model=model, rank=rank, seed=0))
    data = [
        # lists: the official client's Datum converts them to TensorData (a before-validator)
        types.Datum(model_input=types.ModelInput.from_ints(t), loss_fn_inputs={"target_tokens": y, "weights": w})  # type: ignore[dict-item]
        for t, y, w in rows
    ]
    adam = types.AdamParams(learning_rate=1e-4)
    tc.forward(data, "cross_entropy").result()  # warm-up: loads the base model in the server
    answer(f"ready {version('tinker')}")
    for command in sys.stdin:
        command = command.strip()
        if command == "quit":
            return
        if command != "step":
            raise SystemExit(f"unknown command {command!r}")
        start = time.perf_counter()
        fb = tc.forward_backward(data, "cross_entropy")
        op = tc.optim_step(adam)
        out = fb.result()
        op.result()
        seconds = time.perf_counter() - start
        answer(json.dumps({"seconds": seconds, "loss": out.metrics["loss:sum"]}))


def main() -> None:
    base_url, model, rank, batch_path = sys.argv[1:5]
    with open(batch_path) as f:
        rows = json.load(f)
    if VERSION >= (0, 27):
        # the official client is a context manager from 0.27 (this SDK's ServiceClient is not)
        with tinker.ServiceClient(base_url=base_url, api_key="tml-bench") as sc:  # type: ignore[attr-defined]
            serve_commands(sc, model, int(rank), rows)
    else:
        serve_commands(tinker.ServiceClient(base_url=base_url, api_key="tml-bench"), model, int(rank), rows)


if __name__ == "__main__":
    main()

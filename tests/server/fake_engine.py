"""FakeEngine: a tiny pure-numpy stand-in for the engine, for scheduler/API tests.

Implements the engine interface (create/copy/drop adapters, forward_backward(_many),
optim_step, save/load, sample, gradient checkpoints) with trivial deterministic math: an adapter is one
float ``w``; the logprob of every target token is ``-(w - 1)**2 - 1``; backward
accumulates ``d loss / d w``; optim_step does ``w -= lr * grad``. ``calls`` records
what the engine was asked to do, in order, and ``gate`` can hold the worker.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
from typing import Any

import numpy as np

from tinker_server.engine import (
    AdamConfig,
    AdapterNotFound,
    LoraSpec,
    ModelInfo,
    SampledSequence,
    SampleJob,
    SampleOutput,
    TrainDatum,
    TrainOutput,
    UserInputError,
)

BAD_TOKEN = 61  # forward_backward raises UserInputError when it runs
CRASH_TOKEN = 62  # forward_backward raises ZeroDivisionError when it runs


class FakeEngine:
    def __init__(self, name: str, home: pathlib.Path, vocab_size: int = 64, max_context: int = 256) -> None:
        tok_dir = home / "fake-tokenizers" / name.replace("/", "--")
        tok_dir.mkdir(parents=True, exist_ok=True)
        (tok_dir / "tokenizer.json").write_text(json.dumps({"model": {"type": "fake"}}))
        (tok_dir / "tokenizer_config.json").write_text("{}")
        (tok_dir / ".built-marker").write_text("")
        self.info = ModelInfo(
            name=name, arch="llama", vocab_size=vocab_size, max_context=max_context, tokenizer_dir=tok_dir
        )
        self.tokenizer = None
        self.adapters: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.grad_checkpoints: dict[str, float] = {}  # gradient_checkpoint("open") copies
        self.gate = threading.Event()
        self.gate.set()

    def _get(self, adapter_id: str) -> dict[str, Any]:
        self.gate.wait(30)
        try:
            return self.adapters[adapter_id]
        except KeyError:
            raise AdapterNotFound(adapter_id) from None

    def create_adapter(self, adapter_id: str, spec: LoraSpec) -> None:
        self.calls.append(("create_adapter", adapter_id))
        self.adapters[adapter_id] = {"spec": spec, "w": 0.0, "grad": 0.0, "steps": 0}

    def copy_adapter(self, src_id: str, dst_id: str) -> None:
        self.calls.append(("copy_adapter", (src_id, dst_id)))
        src = self._get(src_id)
        self.adapters[dst_id] = {"spec": src["spec"], "w": src["w"], "grad": 0.0, "steps": 0}

    def drop_adapter(self, adapter_id: str) -> None:
        self.calls.append(("drop_adapter", adapter_id))
        self._get(adapter_id)
        del self.adapters[adapter_id]
        self.grad_checkpoints.pop(adapter_id, None)

    def has_adapter(self, adapter_id: str) -> bool:
        return adapter_id in self.adapters

    def adapter_ids(self) -> list[str]:
        return list(self.adapters)

    def adapter_spec(self, adapter_id: str) -> LoraSpec:
        return self._get(adapter_id)["spec"]

    def forward_backward(
        self, adapter_id: str, data: list[TrainDatum], loss_fn: str, loss_fn_config: dict | None, *, backward: bool
    ) -> TrainOutput:
        self.calls.append(("forward_backward" if backward else "forward", adapter_id))
        adapter = self._get(adapter_id)
        # Failures only found while running, triggered by the first token of the first datum.
        if data and data[0].tokens[0] == BAD_TOKEN:
            raise UserInputError("this datum cannot be trained on")
        if data and data[0].tokens[0] == CRASH_TOKEN:
            raise ZeroDivisionError("simulated engine crash")
        w = adapter["w"]
        outputs = []
        loss = 0.0
        grad = 0.0
        for datum in data:
            n = len(datum.tokens)
            weights = datum.loss_fn_inputs.get("weights", np.ones(n, dtype=np.float32))
            lp = np.full(n, -((w - 1.0) ** 2) - 1.0, dtype=np.float32)
            outputs.append({"logprobs": lp})
            loss += float(-(weights * lp).sum())
            grad += float((weights * 2 * (w - 1.0)).sum())
        if backward:
            adapter["grad"] += grad
        return TrainOutput(loss_fn_outputs=outputs, metrics={"loss:sum": loss})

    def forward_backward_many(self, items: list[tuple]) -> list[Any]:
        self.calls.append(("forward_backward_many", len(items)))
        out: list[Any] = []
        for adapter_id, data, loss_fn, cfg, backward in items:
            try:
                out.append(self.forward_backward(adapter_id, data, loss_fn, cfg, backward=backward))
            except (UserInputError, AdapterNotFound) as exc:
                out.append(exc)
            except ZeroDivisionError:
                if len(items) == 1:
                    raise
                out.append(UserInputError("crashed in a batch"))
        return out

    def gradient_checkpoint(self, adapter_id: str, action: str) -> None:
        self.calls.append(("gradient_checkpoint", (adapter_id, action)))
        if action == "open":
            adapter = self._get(adapter_id)
            self.grad_checkpoints[adapter_id] = adapter["grad"]
        elif action == "restore":
            if adapter_id in self.grad_checkpoints and adapter_id in self.adapters:
                self.adapters[adapter_id]["grad"] = self.grad_checkpoints[adapter_id]
            self.grad_checkpoints.pop(adapter_id, None)
        elif action == "close":
            self.grad_checkpoints.pop(adapter_id, None)
        else:
            raise UserInputError(f"unknown gradient checkpoint action {action!r}")

    def optim_step(self, adapter_id: str, params: AdamConfig) -> dict[str, float]:
        self.calls.append(("optim_step", adapter_id))
        adapter = self._get(adapter_id)
        adapter["w"] -= params.learning_rate * adapter["grad"]
        adapter["grad"] = 0.0
        adapter["steps"] += 1
        return {"step": float(adapter["steps"]), "learning_rate": params.learning_rate}

    def save_adapter(self, adapter_id: str, directory: pathlib.Path, *, optimizer: bool) -> int:
        self.calls.append(("save_adapter", adapter_id))
        adapter = self._get(adapter_id)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(directory.name + ".tmp")
        tmp.mkdir(exist_ok=True)
        spec = adapter["spec"]
        (tmp / "adapter_config.json").write_text(json.dumps({"r": spec.rank}))
        state = {"w": adapter["w"]}
        if optimizer:
            state["steps"] = adapter["steps"]
        (tmp / "adapter_model.json").write_text(json.dumps(state))
        if directory.exists():
            import shutil

            shutil.rmtree(directory)
        os.replace(tmp, directory)
        return sum(p.stat().st_size for p in directory.iterdir())

    def load_adapter(self, adapter_id: str, directory: pathlib.Path, *, optimizer: bool) -> LoraSpec:
        self.calls.append(("load_adapter", adapter_id))
        self.gate.wait(30)
        if not directory.is_dir():
            raise UserInputError(f"no checkpoint at {directory}")
        rank = json.loads((directory / "adapter_config.json").read_text())["r"]
        state = json.loads((directory / "adapter_model.json").read_text())
        spec = LoraSpec(rank=rank)
        adapter = self.adapters.setdefault(adapter_id, {"spec": spec, "w": 0.0, "grad": 0.0, "steps": 0})
        adapter["w"] = state["w"]
        adapter["grad"] = 0.0
        if optimizer:
            adapter["steps"] = state.get("steps", 0)
        return spec

    def sample(self, jobs: list[SampleJob]) -> list[Any]:
        self.calls.append(("sample", len(jobs)))
        self.gate.wait(30)
        out: list[Any] = []
        for job in jobs:
            if job.adapter_id is not None and job.adapter_id not in self.adapters:
                out.append(AdapterNotFound(job.adapter_id))
                continue
            n = job.max_tokens or 4
            seqs = [
                SampledSequence(
                    tokens=[(i + k) % self.info.vocab_size for k in range(n)], logprobs=[-0.5] * n, stop_reason="length"
                )
                for i in range(job.num_samples)
            ]
            plp = [None] + [-1.0] * (len(job.prompt) - 1) if job.prompt_logprobs else None
            topk = (
                [None] + [[(1, -0.125), (2, -0.25)][: job.topk_prompt_logprobs] for _ in job.prompt[1:]]
                if job.topk_prompt_logprobs
                else None
            )
            out.append(SampleOutput(sequences=seqs, prompt_logprobs=plp, topk_prompt_logprobs=topk))
        return out

"""Sampling throughput: our engine's sampler vs Hugging Face ``generate``, side by side.

One process, one model load (the engine's; a plain, unwrapped copy of the same
weights serves the Hugging Face baselines):

(a) generation: 8 prompts x 64 new tokens (EOS does not stop either side), greedy
    or temperature 1 with a fixed seed, KV cache on both sides:
      * engine, base model (no adapter) and with a rank-32 LoRA adapter on all layers;
      * ``model.generate`` on the plain model, the 8 prompts left-padded in one batch;
    tokens/s of each and the ratio engine / HF (target >= 1.0).
(b) prompt logprobs, 8 x 128 tokens: the engine's ``compute_logprobs`` path
    (``SampleJob(prompt_logprobs=True, max_tokens=1)``, what the SDK sends), the
    engine's training-path ``forward``, and a plain ``model(ids)`` + log_softmax
    under ``no_grad``; tokens/s of each.

    python bench/sampling.py [--home DIR] [--model NAME] [--dtype float32|bfloat16|float16]
                             [--device cpu|cuda] [--random-config llama-1b] [--mode greedy|sample]
                             [--threads N] [--repeats 3] [--profile] [--plain-weights]

``--home`` defaults to ``$TINKER_HOME`` (else ``~/.tinker``); SmolLM2 is converted
from its GGUF there on the first run. ``--random-config llama-1b`` skips loading
and builds a Llama-3.2-1B-shaped model (1.24 B parameters) with random weights
(for GPU runs; pair it with ``--dtype bfloat16 --device cuda``). The numbers mean
nothing while other heavy processes run: the script prints the load average and
warns when the machine is busy.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import os
import pathlib
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tinker_server.engine import (
    DEFAULT_MODEL,
    TINY_MODEL,
    LoraSpec,
    SampleJob,
    TrainDatum,
)
from tinker_server.engine.engine import Engine
from tinker_server.engine.messages import ModelInfo
from tinker_server.engine.models import (
    LoadedBase,
    load_base_model,
    model_cache_dir,
    parse_dtype,
)
from tinker_server.engine.tiny import ensure_tiny_tokenizer

PROMPTS = [
    "The history of the printing press begins in",
    "Write a short poem about the sea and the wind.",
    "Explain how a refrigerator works, step by step:",
    "Once upon a time, in a small village at the edge of a forest,",
    "Here is a Python function that reverses a linked list:",
    "The three most important causes of the French Revolution were",
    "Translate into French: The weather is lovely today, let us go for a walk.",
    "Q: What is the capital of Australia?\nA:",
]

RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    # The shape of meta-llama/Llama-3.2-1B (1.24 B parameters with tied embeddings).
    "llama-1b": {
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    },
}


# -- setup ---------------------------------------------------------------------------------


def random_base(name: str, home: pathlib.Path, device: str, dtype: str) -> LoadedBase:
    from transformers import LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    config = LlamaConfig(**RANDOM_CONFIGS[name])
    torch.manual_seed(0)
    with torch.device(device):
        # ignore: transformers types the wrapped .to of its models for a model argument, not a dtype
        model = LlamaForCausalLM(config).to(parse_dtype(dtype))  # type: ignore[arg-type]
    model.train(False)
    model.requires_grad_(False)
    # any tokenizer works: prompts are random ids; it only decodes stop strings
    tok_dir = ensure_tiny_tokenizer(model_cache_dir(home, TINY_MODEL) / "tokenizer")
    info = ModelInfo(
        name=f"random/{name}",
        arch="llama",
        vocab_size=config.vocab_size,
        max_context=config.max_position_embeddings,
        tokenizer_dir=tok_dir,
    )
    return LoadedBase(model=model, info=info, source="random", load_seconds=time.perf_counter() - start)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int, device: str) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    result = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def machine_info(device: str, load: tuple[float, float, float]) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"machine : {cpu}, {os.cpu_count()} logical cores, {platform.platform()}",
        (
            f"python  : {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {__import__('transformers').__version__}, torch threads {torch.get_num_threads()}"
        ),
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        lines.append(f"gpu     : {torch.cuda.get_device_name(0)}")
    lines.append(f"load    : {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min, before the run)")
    if load[0] > 0.5 * (os.cpu_count() or 1):
        lines.append("WARNING : the machine is busy; these numbers are not trustworthy")
    return lines


# -- the contenders ------------------------------------------------------------------------


def engine_generate(
    engine: Engine, prompts: list[list[int]], new: int, adapter: str | None, greedy: bool, seed: int
) -> list[list[int]]:
    jobs = [
        SampleJob(adapter, p, num_samples=1, max_tokens=new, temperature=0.0 if greedy else 1.0, seed=seed + i)
        for i, p in enumerate(prompts)
    ]
    out = engine.sample(jobs)
    for o in out:
        if isinstance(o, Exception):
            raise o
    return [o.sequences[0].tokens for o in out]  # type: ignore[union-attr]


def left_pad(prompts: list[list[int]], pad: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def hf_generate(
    model: Any, prompts: list[list[int]], new: int, pad: int, greedy: bool, seed: int, device: str
) -> list[list[int]]:
    from transformers import GenerationConfig

    ids, mask = left_pad(prompts, pad, device)
    torch.manual_seed(seed)
    # eos_token_id=[]: like our sampler here, HF neither stops at EOS nor masks it out
    # (min_new_tokens would suppress EOS and change greedy continuations).
    config = GenerationConfig(
        max_new_tokens=new,
        eos_token_id=[],
        pad_token_id=pad,
        use_cache=True,
        **({"do_sample": False} if greedy else {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}),
    )
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return [row[ids.shape[1] :].tolist() for row in out]


def engine_prompt_logprobs(engine: Engine, prompts: list[list[int]], adapter: str | None) -> list[Any]:
    jobs = [SampleJob(adapter, p, num_samples=1, max_tokens=1, prompt_logprobs=True) for p in prompts]
    out = engine.sample(jobs)
    return [o.prompt_logprobs for o in out]  # type: ignore[union-attr]


def engine_forward(engine: Engine, rows: list[list[int]], adapter: str) -> Any:
    data = [
        TrainDatum(tokens=r[:-1], loss_fn_inputs={"target_tokens": np.asarray(r[1:], dtype=np.int64)}) for r in rows
    ]
    return engine.forward_backward(adapter, data, "cross_entropy", None, backward=False)


def plain_forward(model: Any, rows: list[list[int]], device: str) -> torch.Tensor:
    ids = torch.tensor(rows, device=device)
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1]).logits.float()
        return torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None])[..., 0]


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("TINKER_HOME", pathlib.Path.home() / ".tinker")),
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--random-config", choices=sorted(RANDOM_CONFIGS), default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=["greedy", "sample"], default="greedy")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--logprob-tokens", type=int, default=128)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="cProfile one engine sampling call")
    parser.add_argument(
        "--plain-weights",
        action="store_true",
        help="engine without oneDNN-packed base weights (the server's packed_weights=false)",
    )
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, greedy, new = args.device, args.mode == "greedy", args.new_tokens

    start = time.perf_counter()
    if args.random_config:
        base = random_base(args.random_config, args.home, device, args.dtype)
    else:
        base = load_base_model(args.model, home=args.home, device=device, dtype=args.dtype)
    plain = copy.deepcopy(base.model)  # unwrapped: the engine wraps its model's linear layers in place
    engine = Engine(base, packed_weights=not args.plain_weights)
    load_s = time.perf_counter() - start
    engine.create_adapter("bench", LoraSpec(rank=args.rank, seed=0))
    with torch.no_grad():  # a non-zero B, so the adapter really computes something
        for _, b in engine._adapters["bench"].weights.values():
            b.normal_(0.0, 1e-3)
    n_params = sum(p.numel() for p in plain.parameters())

    tok = engine.tokenizer
    vocab = engine.info.vocab_size
    rng = np.random.default_rng(0)
    if args.random_config:
        prompts = [rng.integers(0, vocab, int(rng.integers(10, 30))).tolist() for _ in range(args.prompts)]
    else:
        prompts = [tok.encode(PROMPTS[i % len(PROMPTS)], add_special_tokens=False) for i in range(args.prompts)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    total_new = args.prompts * new

    rows: list[tuple[str, float, float]] = []  # (what, seconds, tokens/s)
    t_base, eng_tokens = timed(lambda: engine_generate(engine, prompts, new, None, greedy, 1), args.repeats, device)
    t_lora, _ = timed(lambda: engine_generate(engine, prompts, new, "bench", greedy, 1), args.repeats, device)
    t_hf, hf_tokens = timed(lambda: hf_generate(plain, prompts, new, pad, greedy, 1, device), args.repeats, device)
    rows += [
        ("engine sampler, base model", t_base, total_new / t_base),
        (f"engine sampler, LoRA r{args.rank} all layers", t_lora, total_new / t_lora),
        ("HF generate (plain model, batched, KV cache)", t_hf, total_new / t_hf),
    ]
    assert all(len(t) == new for t in eng_tokens) and all(len(t) == new for t in hf_tokens)
    same = sum(a == b for a, b in zip(eng_tokens, hf_tokens, strict=False))

    lp_rows = [rng.integers(0, vocab, args.logprob_tokens + 1).tolist() for _ in range(args.prompts)]
    lp_prompts = [r[: args.logprob_tokens] for r in lp_rows]
    total_lp = args.prompts * args.logprob_tokens
    t_clp, clp = timed(lambda: engine_prompt_logprobs(engine, lp_prompts, None), args.repeats, device)
    t_clp_lora, _ = timed(lambda: engine_prompt_logprobs(engine, lp_prompts, "bench"), args.repeats, device)
    t_fwd, _ = timed(lambda: engine_forward(engine, lp_rows, "bench"), args.repeats, device)
    t_plain, ref = timed(lambda: plain_forward(plain, lp_rows, device), args.repeats, device)
    lp_diff = max(
        float(
            np.abs(np.asarray(c[1:], dtype=np.float64) - ref[i, : args.logprob_tokens - 1].double().cpu().numpy()).max()
        )
        for i, c in enumerate(clp)
    )
    lp_rows_out = [
        ("engine compute_logprobs path, base model", t_clp, total_lp / t_clp),
        (f"engine compute_logprobs path, LoRA r{args.rank}", t_clp_lora, total_lp / t_clp_lora),
        (f"engine forward (training path), LoRA r{args.rank}", t_fwd, total_lp / t_fwd),
        ("plain model forward + log_softmax, no_grad", t_plain, total_lp / t_plain),
    ]

    name = f"random {args.random_config}" if args.random_config else args.model
    print("\n".join(machine_info(device, load_before)))
    print(
        f"model   : {name} ({n_params / 1e6:.0f} M parameters), {args.dtype}, {device}; loaded in {load_s:.1f} s "
        f"({base.source}); median of {args.repeats} after a warm-up"
    )
    print(f"engine  : {engine.packed_layers} of {len(engine._layers)} linear layers with packed weights")
    print()
    print(f"(a) generation: {args.prompts} prompts x {new} new tokens, {args.mode}")
    print(f"    {'':50s} {'seconds':>8s} {'tokens/s':>9s}")
    for what, secs, tps in rows:
        print(f"    {what:50s} {secs:8.3f} {tps:9.1f}")
    print(f"    ratio engine/HF tokens/s: base {t_hf / t_base:.2f}, LoRA {t_hf / t_lora:.2f} (target >= 1.0)")
    if greedy:
        print(f"    greedy continuations identical to HF: {same}/{args.prompts}")
    print()
    print(f"(b) prompt logprobs: {args.prompts} x {args.logprob_tokens} tokens")
    print(f"    {'':50s} {'seconds':>8s} {'tokens/s':>9s}")
    for what, secs, tps in lp_rows_out:
        print(f"    {what:50s} {secs:8.3f} {tps:9.1f}")
    print(
        f"    ratio compute_logprobs/plain tokens/s: {t_plain / t_clp:.2f}; max |engine - plain| logprob: {lp_diff:.1e}"
    )

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        engine_generate(engine, prompts, new, "bench", greedy, 1)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
        print("\nprofile of one engine sampling call (LoRA):")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())

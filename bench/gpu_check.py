"""One prepared check for a GPU machine (written for one H200): bf16 LoRA training and sampling.

    python bench/gpu_check.py                 # needs CUDA; exits 2 with a message without it
    python bench/gpu_check.py --dry-run       # the same code path on CPU, tiny config, small sizes

Builds a Llama-3.2-1B-shaped model with random weights (``RANDOM_CONFIGS["llama-1b"]``
of ``bench/sampling.py``, 1.24 B parameters: hidden 2048, 16 layers, 32 heads, 8 KV
heads, intermediate 8192, vocab 128256, tied embeddings), bf16 on CUDA, SDPA attention,
and the engine on it with a LoRA rank-32 adapter on every linear layer, then measures

(a) training: forward_backward (cross-entropy) + AdamW step on 8 x 2048 tokens, one
    micro-batch, no activation checkpointing (``--checkpointing`` turns it on):
    tokens/s and MFU. Model FLOPs per step, ``T`` tokens (8 x 2048), ``B`` rows of ``S``:

        4 * N_lin * T             frozen base matmuls: forward (2) + input gradients (2);
                                  no weight gradients for frozen weights
      + 6 * N_lora * T            LoRA matmuls: forward + input and weight gradients
      + 6 * L * B * S^2 * d       attention scores and values (2 * 2 * S^2 * d per layer
                                  and row forward, halved for the causal mask, x3 with backward)

    where ``N_lin`` counts every linear weight the tokens go through (lm_head included,
    the embedding lookup not), ``d`` = hidden size, ``L`` = layers. Recomputation under
    activation checkpointing is not counted. MFU = FLOPs / seconds / peak, with the
    peak ``--peak-tflops`` (default 989: H200 SXM dense bf16 tensor-core peak, the
    same as H100 SXM; 1979 is the 2:4-sparse figure). ``mfu_6nd`` is the usual
    ``6 * N * T`` convention (N = all parameters), for comparison with full fine-tuning.
(b) sampling: 8 prompts (random ids, 16-48 tokens) x 128 new tokens, greedy: the
    engine's sampler (base model and LoRA r32) against HF ``generate`` on an
    unwrapped copy of the same weights (left-padded batch, KV cache), tokens/s and ratio.

Prints the machine lines, then one JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from sampling import RANDOM_CONFIGS, engine_generate, hf_generate, machine_info, random_base, sync, timed

from tinker_server.engine import AdamConfig, LoraSpec, TrainDatum
from tinker_server.engine.engine import Engine

H200_BF16_DENSE_TFLOPS = 989.0
DRY_RUN = "dry-run-tiny"
# A small Llama for --dry-run on CPU: the same code path in seconds.
RANDOM_CONFIGS.setdefault(
    DRY_RUN,
    {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    },
)


def train_flops(model: torch.nn.Module, engine: Engine, adapter: str, batch: int, seq: int) -> dict[str, float]:
    config: Any = model.config  # an HF config: its fields depend on the architecture
    tokens = batch * seq
    n_lin = sum(layer.in_features * layer.out_features for layer in engine._layers.values())
    n_lora = sum(p.numel() for p in engine._adapters[adapter].parameters())
    attention = 6 * config.num_hidden_layers * batch * seq**2 * config.hidden_size
    n_all = sum(p.numel() for p in model.parameters())
    return {
        "model": 4 * n_lin * tokens + 6 * n_lora * tokens + attention,
        "6nd": 6 * n_all * tokens,
        "n_linear": n_lin,
        "n_lora": n_lora,
        "n_params": n_all,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny config on CPU (tests the code path)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing in training")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    args = parser.parse_args(argv)
    if args.dry_run:
        device, name = "cpu", DRY_RUN
        args.seq, args.new_tokens, args.repeats = min(args.seq, 64), min(args.new_tokens, 8), 1
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print(
                "gpu_check: no CUDA device is available (torch.cuda.is_available() is False); this check needs "
                "a GPU. Use --dry-run to exercise the code path on CPU.",
                file=sys.stderr,
            )
            return 2
        device, name = "cuda", "llama-1b"
    load_before = __import__("os").getloadavg()
    home = pathlib.Path(tempfile.mkdtemp(prefix="gpu-check-home-"))

    start = time.perf_counter()
    base = random_base(name, home, device, "bfloat16")
    model = base.model
    attn = getattr(model.config, "_attn_implementation", None)
    plain = copy.deepcopy(model)  # unwrapped copy for HF generate (the engine wraps its model in place)
    engine = Engine(
        base,
        max_tokens_per_microbatch=args.batch * args.seq,
        activation_checkpointing=args.checkpointing,
        packed_weights=False,
    )
    engine.create_adapter("lora", LoraSpec(rank=args.rank, seed=0, train_unembed=True))
    with torch.no_grad():  # a non-zero B, so the adapter computes something in sampling
        for _, b in engine._adapters["lora"].weights.values():
            b.normal_(0.0, 1e-3)
    build_s = time.perf_counter() - start

    vocab = engine.info.vocab_size
    rng = np.random.default_rng(0)
    data = []
    for _ in range(args.batch):
        ids = rng.integers(0, vocab, args.seq + 1)
        data.append(TrainDatum(tokens=ids[:-1].tolist(), loss_fn_inputs={"target_tokens": ids[1:]}))

    def train_step() -> float:
        out = engine.forward_backward("lora", data, "cross_entropy", None, backward=True)
        engine.optim_step("lora", AdamConfig(learning_rate=1e-5))
        return out.metrics["loss:sum"]

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_train, loss = timed(train_step, args.repeats, device)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    flops = train_flops(model, engine, "lora", args.batch, args.seq)
    tokens = args.batch * args.seq
    peak = args.peak_tflops * 1e12

    prompts = [rng.integers(0, vocab, int(rng.integers(16, 49))).tolist() for _ in range(args.prompts)]
    pad = 0
    new = args.new_tokens
    total_new = args.prompts * new
    t_base, _ = timed(lambda: engine_generate(engine, prompts, new, None, True, 1), args.repeats, device)
    t_lora, _ = timed(lambda: engine_generate(engine, prompts, new, "lora", True, 1), args.repeats, device)
    t_hf, _ = timed(lambda: hf_generate(plain, prompts, new, pad, True, 1, device), args.repeats, device)
    sync(device)

    summary: dict[str, Any] = {
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": f"random {name}",
        "dtype": "bfloat16",
        "attn_implementation": attn,
        "params": flops["n_params"],
        "build_s": round(build_s, 2),
        "train": {
            "batch": args.batch,
            "seq": args.seq,
            "rank": args.rank,
            "checkpointing": args.checkpointing,
            "step_s": round(t_train, 4),
            "tokens_per_s": round(tokens / t_train, 1),
            "loss_per_token": loss / tokens,
            "model_flops_per_step": flops["model"],
            "peak_tflops_assumed": args.peak_tflops,
            "mfu": flops["model"] / t_train / peak,
            "mfu_6nd": flops["6nd"] / t_train / peak,
            "peak_memory_gib": None if peak_mem is None else round(peak_mem, 2),
        },
        "sampling": {
            "prompts": args.prompts,
            "new_tokens": new,
            "mode": "greedy",
            "engine_base_tokens_per_s": round(total_new / t_base, 1),
            "engine_tokens_per_s": round(total_new / t_lora, 1),
            "hf_tokens_per_s": round(total_new / t_hf, 1),
            "ratio_engine_lora_vs_hf": round(t_hf / t_lora, 3),
            "ratio_engine_base_vs_hf": round(t_hf / t_base, 3),
        },
    }
    print("\n".join(machine_info(device, load_before)))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

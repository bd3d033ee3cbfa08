"""Sampling through the API: 8 prompts sent as 8 concurrent SDK requests, against the
engine sampling the same 8 prompts in one in-process call.

    python bench/sampling_api.py [--home DIR] [--new-tokens 64] [--repeats 3]

RL loops send one ``SamplingClient.sample`` per prompt. The server should decode
requests that arrive together in one batch (``sample_batch_window_s``); without
that, the first request decodes alone and the rest wait for it. This script runs
``tinker serve`` twice (the default window, then ``TINKER_SAMPLE_BATCH_WINDOW_S=0``)
and the engine in this process (before and after the servers; the faster median
is the baseline), greedy, and prints each one's median wall time, the ratio to
the engine, and whether the tokens are the same.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from sampling import PROMPTS, engine_generate, machine_info

from tinker_server.engine import DEFAULT_MODEL
from tinker_server.engine.engine import Engine
from tinker_server.engine.models import load_base_model
from tinker_server.launch import background_server


def api_median(
    home: pathlib.Path, prompts: list[list[int]], new: int, repeats: int, env: dict[str, str]
) -> tuple[float, list[list[int]]]:
    import tinker
    from tinker import types

    with background_server(home, [DEFAULT_MODEL], env=env) as url:
        sampler = tinker.ServiceClient(api_key="tml-bench", base_url=url).create_sampling_client(
            base_model=DEFAULT_MODEL
        )
        params = types.SamplingParams(max_tokens=new, temperature=0.0)

        def once() -> list[list[int]]:
            futures = [
                sampler.sample(types.ModelInput.from_ints(p), num_samples=1, sampling_params=params) for p in prompts
            ]
            return [list(f.result().sequences[0].tokens) for f in futures]

        tokens = once()  # warm-up (loads the model)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = once()
            times.append(time.perf_counter() - start)
    return statistics.median(times), tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("TINKER_HOME", pathlib.Path.home() / ".tinker")),
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()

    base = load_base_model(DEFAULT_MODEL, home=args.home, device="cpu", dtype="float32")
    engine = Engine(base)
    prompts = [engine.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    new = args.new_tokens

    def engine_median() -> tuple[float, list[list[int]]]:
        engine_generate(engine, prompts, new, None, True, 1)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            tokens = engine_generate(engine, prompts, new, None, True, 1)
            times.append(time.perf_counter() - start)
        return statistics.median(times), tokens

    # The engine runs before and after the servers; the faster median is the baseline
    # (the conservative choice for the ratios).
    t_before, engine_tokens = engine_median()
    t_window, window_tokens = api_median(args.home, prompts, new, args.repeats, {})
    t_none, none_tokens = api_median(args.home, prompts, new, args.repeats, {"TINKER_SAMPLE_BATCH_WINDOW_S": "0"})
    t_after, _ = engine_median()
    t_engine = min(t_before, t_after)

    print("\n".join(machine_info("cpu", load_before)))
    print(
        f"model   : {DEFAULT_MODEL}, float32, cpu; {len(prompts)} prompts x {new} new tokens, greedy; "
        f"median of {args.repeats} after a warm-up"
    )
    print()
    print(f"engine medians before / after the servers: {t_before:.3f} / {t_after:.3f} s")
    print(f"    {'':58s} {'seconds':>8s} {'x engine':>9s} {'same tokens':>12s}")
    rows = [
        ("engine, one in-process call (faster median)", t_engine, engine_tokens),
        ("API, 8 concurrent SDK requests (default window)", t_window, window_tokens),
        ("API, 8 concurrent SDK requests, sample_batch_window_s=0", t_none, none_tokens),
    ]
    for what, secs, tokens in rows:
        print(f"    {what:58s} {secs:8.3f} {secs / t_engine:9.2f} {tokens == engine_tokens!s:>12s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

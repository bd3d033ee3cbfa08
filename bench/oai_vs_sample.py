"""The OpenAI-compatible completions endpoint against Tinker ``sample``, on one server.

    python bench/oai_vs_sample.py [--home DIR] [--new-tokens 64] [--rounds 5]

Both sides send the same 8 prompts (those of ``bench/sampling.py``) as 8 concurrent
requests, greedy, ``--new-tokens`` tokens each, to one ``tinker serve`` running
SmolLM2-135M-Instruct:

* Tinker: our SDK's ``SamplingClient.sample`` per prompt (token ids, tokenized here);
* OpenAI: the official ``openai`` client's ``completions.create`` per prompt, text in
  and text out (the server tokenizes and detokenizes), ``ignore_eos`` so that both
  generate the same number of tokens.

Rounds alternate which side goes first, after one warm-up of each. Printed: each
side's median wall time, the ratio OpenAI / Tinker (target <= 1.10), whether the texts
are identical, and, for reference, the OpenAI side as a single request with all 8
prompts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from sampling import PROMPTS, machine_info

from tinker_server.engine import DEFAULT_MODEL
from tinker_server.launch import background_server

KEY = "tml-bench"


def served_tokenizer(url: str, directory: pathlib.Path) -> Any:
    """The served model's tokenizer, from the server's ``tokenizer_files`` extension."""
    import httpx
    from transformers import AutoTokenizer

    answer = httpx.post(
        f"{url}/api/v1/tokenizer_files", json={"tokenizer_id": DEFAULT_MODEL}, headers={"X-API-Key": KEY}, timeout=300
    )
    answer.raise_for_status()
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in answer.json()["files"].items():
        (directory / name).write_text(text)
    return AutoTokenizer.from_pretrained(str(directory))


def main(argv: list[str] | None = None) -> int:
    import openai

    import tinker
    from tinker import types

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("TINKER_HOME", pathlib.Path.home() / ".tinker")),
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    new = args.new_tokens

    with background_server(args.home, [DEFAULT_MODEL], timeout=300) as url:
        service = tinker.ServiceClient(base_url=url, api_key=KEY)
        sampler = service.create_sampling_client(base_model=DEFAULT_MODEL)
        tokenizer = served_tokenizer(url, args.home / "bench-tokenizer")
        prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
        client = openai.OpenAI(base_url=f"{url}/oai/api/v1", api_key=KEY, max_retries=0)
        pool = concurrent.futures.ThreadPoolExecutor(len(PROMPTS))
        params = types.SamplingParams(max_tokens=new, temperature=0.0)

        def tinker_round() -> list[str]:
            futures = [
                sampler.sample(types.ModelInput.from_ints(p), num_samples=1, sampling_params=params) for p in prompts
            ]
            return [tokenizer.decode(f.result().sequences[0].tokens) for f in futures]

        def complete(prompt: str | list[str]) -> list[str]:
            out = client.completions.create(
                model=DEFAULT_MODEL, prompt=prompt, max_tokens=new, temperature=0, extra_body={"ignore_eos": True}
            )
            assert all(c.finish_reason == "length" for c in out.choices)
            assert out.usage is not None and out.usage.completion_tokens == new * len(out.choices)
            return [c.text for c in out.choices]

        def oai_round() -> list[str]:
            return [text for texts in pool.map(complete, PROMPTS) for text in texts]

        def oai_batch_round() -> list[str]:
            return complete(list(PROMPTS))

        def timed(run: Callable[[], list[str]]) -> tuple[float, list[str]]:
            start = time.perf_counter()
            texts = run()
            return time.perf_counter() - start, texts

        expected, oai_texts = tinker_round(), oai_round()  # warm-up (loads the model)
        times: dict[str, list[float]] = {"tinker": [], "oai": [], "oai-batch": []}
        same = oai_texts == expected
        for r in range(args.rounds):
            order = [("tinker", tinker_round), ("oai", oai_round)]
            for name, run in order if r % 2 == 0 else reversed(order):
                seconds, texts = timed(run)
                times[name].append(seconds)
                same = same and texts == expected
        for _ in range(args.rounds):
            seconds, texts = timed(oai_batch_round)
            times["oai-batch"].append(seconds)
            same = same and texts == expected
        pool.shutdown()
        service.holder.close()

    median = {name: statistics.median(values) for name, values in times.items()}
    print("\n".join(machine_info("cpu", load_before)))
    print(
        f"model   : {DEFAULT_MODEL}, float32, cpu; {len(PROMPTS)} prompts x {new} new tokens, greedy, "
        f"8 concurrent requests; median of {args.rounds} alternating rounds after a warm-up"
    )
    print()
    print(f"    {'':52s} {'seconds':>8s} {'x Tinker':>9s}")
    rows = [
        ("Tinker sample (our SDK), 8 requests", "tinker"),
        ("OpenAI completions (openai client), 8 requests", "oai"),
        ("OpenAI completions, 1 request with 8 prompts", "oai-batch"),
    ]
    for what, name in rows:
        print(f"    {what:52s} {median[name]:8.3f} {median[name] / median['tinker']:9.2f}")
    print(f"\nratio OpenAI / Tinker: {median['oai'] / median['tinker']:.3f} (target <= 1.10); identical texts: {same}")
    print("rounds (s): " + "; ".join(f"{k} " + " ".join(f"{v:.2f}" for v in vs) for k, vs in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

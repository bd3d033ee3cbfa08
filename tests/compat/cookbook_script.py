"""Runs tinker-cookbook's own recipes against our server, offline. Runs in the cookbook's
virtualenv (`make test` builds it: tinker==0.38.0 + tinker-cookbook, pins in
cookbook-constraints.txt) and imports nothing of this project. Usage::

    python cookbook_script.py PHASE BASE_URL MODEL TOKENIZER_DIR WORK_DIR

Phases:

* ``sl``: the ``chat_sl`` recipe (``python -m tinker_cookbook.recipes.chat_sl.train``) on a
  JSONL file of generated conversations, with periodic and rolling checkpoints; then the
  same command again with one more epoch, which resumes from the recipe's last checkpoint
  (weights and optimizer); then greedy sampling from its final sampler checkpoint.
* ``rl``: the ``math_rl`` recipe on the ``arithmetic`` environment with
  ``loss_fn=importance_sampling`` and tiny batches.

Offline: the recipes load the tokenizer with ``AutoTokenizer.from_pretrained(MODEL)``, so
the tokenizer files of TOKENIZER_DIR are laid out as a Hugging Face hub cache under WORK_DIR
and the recipes run with ``HF_HUB_OFFLINE=1``. SmolLM2's chat template is ChatML, which the
cookbook's ``qwen3_instruct`` renderer writes token for token (checked below).

Prints ``ok: ...`` per check and ``PASSED <phase>`` at the end; exits non-zero on failure.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RENDERER = "qwen3_instruct"
# The files AutoTokenizer reads; the weights are never needed on the client side.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)
NAMES = ["Ada", "Bo", "Cy", "Di", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Max", "Ned", "Oz", "Pam"]
COLOURS = ["red", "blue", "green", "gold", "pink", "gray"]


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}", flush=True)


def hub_cache(tokenizer_dir: Path, cache: Path, model: str) -> Path:
    """A hub cache holding MODEL's tokenizer at one snapshot, as huggingface_hub lays it out."""
    repo = cache / ("models--" + model.replace("/", "--"))
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return cache


def offline_env(work: Path, tokenizer_dir: Path, model: str) -> dict[str, str]:
    cache = hub_cache(tokenizer_dir, work / "hf" / "hub", model)
    env = {
        **os.environ,
        "HF_HOME": str(work / "hf"),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TINKER_COOKBOOK_RUNS_DIR": str(work / "runs"),
        "TINKER_API_KEY": os.environ.get("TINKER_API_KEY", "tml-local"),
    }
    os.environ.update(env)  # for this process's own tokenizer and client too
    return env


def run_recipe(module: str, args: dict[str, object], env: dict[str, str], work: Path, tag: str) -> str:
    """`python -m MODULE key=value ...`, the recipe's own command line; returns its output."""
    cmd = [sys.executable, "-m", module, *(f"{k}={v}" for k, v in args.items())]
    print("$", " ".join(cmd), flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=600)
    output = proc.stdout + proc.stderr
    (work / f"{tag}.out").write_text(output)
    if proc.returncode != 0 or "Training completed successfully" not in output:
        print(output[-6000:])
    check(proc.returncode == 0, f"{tag}: {module} exits 0 ({time.monotonic() - started:.0f} s)")
    check("Training completed successfully" in output, f"{tag}: the recipe reports completion")
    check("Traceback" not in output, f"{tag}: no traceback in the recipe's output")
    return output


def metrics(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines() if line.strip()]


def recorded_checkpoints(log_path: Path) -> list[dict]:
    path = log_path / "checkpoints.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def server_checkpoints(rest, run_id: str) -> dict[str, Any]:
    return {c.tinker_path: c for c in rest.list_checkpoints(run_id).result().checkpoints}


def run_id_of(tinker_path: str) -> str:
    return tinker_path.removeprefix("tinker://").split("/", 1)[0]


def check_listed(rest, records: list[dict], tag: str) -> dict[str, Any]:
    """Every checkpoint the recipe recorded (and kept) is listed by the server, with a TTL
    exactly when the recipe asked for one (periodic yes, final no)."""
    kept = [r for r in records if not r.get("rolling")]
    listed: dict[str, Any] = {}
    for run_id in {run_id_of(r["state_path"]) for r in kept}:
        listed.update(server_checkpoints(rest, run_id))
    for record in kept:
        for key in ("state_path", "sampler_path"):
            if key not in record:
                continue
            path = record[key]
            check(path in listed, f"{tag}: the server lists {path}")
            expires = listed[path].expires_at
            if record["name"] == "final":
                check(expires is None, f"{tag}: final checkpoint {key} has no expiry")
            else:
                check(expires is not None, f"{tag}: periodic checkpoint {record['name']} {key} has an expiry")
    return listed


# ----------------------------------------------------------------------------- sl


def write_conversations(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(n):
            name, colour = rng.choice(NAMES), rng.choice(COLOURS)
            messages = [
                {"role": "user", "content": f"Greet {name}, whose favourite colour is {colour}."},
                {"role": "assistant", "content": f"Hello {name}! Here is a {colour} star for you: *{colour}*."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")


def check_renderer(model: str) -> None:
    from tinker_cookbook import renderers
    from tinker_cookbook.tokenizer_utils import get_tokenizer

    tok = get_tokenizer(model)
    renderer = renderers.get_renderer(RENDERER, tok)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    ours = tok.decode(renderer.build_supervised_example(messages)[0].to_ints())
    theirs = tok.apply_chat_template(messages, tokenize=False)
    check(theirs.startswith(ours) and theirs[len(ours) :].strip() == "", f"{RENDERER} renders {model}'s chat template")
    prompt = tok.decode(renderer.build_generation_prompt(messages[:2]).to_ints())
    check(
        prompt == tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True),
        f"{RENDERER} generation prompt equals the template's",
    )


def phase_sl(url: str, model: str, work: Path, env: dict[str, str]) -> None:
    from tinker_cookbook import renderers
    from tinker_cookbook.tokenizer_utils import get_tokenizer

    import tinker

    check_renderer(model)
    data = work / "conversations.jsonl"
    write_conversations(data, 24)  # 6 batches of 4
    log_path = work / "chat_sl"
    args: dict[str, object] = {
        "base_url": url,
        "model_name": model,
        "renderer_name": RENDERER,
        "dataset": data,
        "log_path": log_path,
        "batch_size": 4,
        "max_length": 256,
        "lora_rank": 8,
        "learning_rate": 5e-4,
        "save_every": 4,
        "rolling_save_every": 3,
        "eval_every": 0,
        "behavior_if_log_dir_exists": "delete",
    }
    output = run_recipe("tinker_cookbook.recipes.chat_sl.train", args, env, work, "sl")
    check("Failed to delete" not in output, "sl: rolling checkpoints were deleted without error")
    rows = metrics(log_path)
    steps = [r["step"] for r in rows]
    check(steps == list(range(6)), f"sl: metrics for steps 0..5 ({steps})")
    nll = [r["train_mean_nll"] for r in rows]
    check(all(finite(x) for x in nll), f"sl: finite train_mean_nll {[round(x, 3) for x in nll]}")
    check(nll[-1] < 0.5 * nll[0], f"sl: train_mean_nll falls ({nll[0]:.3f} -> {nll[-1]:.3f})")
    first_records = recorded_checkpoints(log_path)
    names = sorted(r["name"] for r in first_records)  # rolling saves finish in the background
    check(names == ["000003", "000004", "final"], f"sl: checkpoints recorded {names}")

    # One more epoch from the same log dir: the recipe resumes from its final checkpoint.
    args |= {"num_epochs": 2, "behavior_if_log_dir_exists": "resume"}
    output = run_recipe("tinker_cookbook.recipes.chat_sl.train", args, env, work, "sl-resume")
    check("Resumed training from" in output, "sl-resume: the recipe resumed from its checkpoint")
    rows = [r for r in metrics(log_path) if r["step"] >= 6]
    check([r["step"] for r in rows] == list(range(6, 12)), "sl-resume: metrics for steps 6..11")
    resumed = [r["train_mean_nll"] for r in rows]
    check(all(finite(x) for x in resumed), f"sl-resume: finite train_mean_nll {[round(x, 3) for x in resumed]}")
    # A fresh adapter would start near nll[0]; loaded weights start where the first run ended.
    check(resumed[0] < 0.5 * nll[0], f"sl-resume: starts from the trained weights ({resumed[0]:.3f})")

    records = recorded_checkpoints(log_path)
    rest = tinker.RestClient(base_url=url)
    listed = check_listed(rest, records, "sl")
    rolling = [r for r in records if r.get("rolling")]
    check(sorted(r["name"] for r in rolling) == ["000003", "000006", "000009"], "sl: rolling checkpoints recorded")
    for record in rolling:
        check(record["state_path"] not in listed, f"sl: rolling checkpoint {record['name']} was deleted")
    runs = {run_id_of(r["state_path"]) for r in records}
    check(len(runs) == 2, "sl: the resumed run is a training run of its own")
    for run_id in runs:
        run = rest.get_training_run(run_id).result()
        check(
            run.base_model == model
            and run.lora_rank == 8
            and (run.user_metadata or {}).get("renderer_name") == RENDERER,
            f"sl: training run {run_id} (base model, rank, renderer_name metadata)",
        )

    # The final sampler checkpoint has learnt the format.
    final = records[-1]
    check(final["name"] == "final", "sl-resume: last record is the final checkpoint")
    tok = get_tokenizer(model)
    renderer = renderers.get_renderer(RENDERER, tok)
    # the official 0.38 client answers a (backwards-compatible) future here
    sampler = tinker.ServiceClient(base_url=url).create_sampling_client(model_path=final["sampler_path"]).result()  # type: ignore[attr-defined]
    prompt = renderer.build_generation_prompt(
        [{"role": "user", "content": "Greet Zed, whose favourite colour is red."}]
    )
    params = tinker.SamplingParams(max_tokens=24, temperature=0.0, stop=renderer.get_stop_sequences())
    seq = sampler.sample(prompt, num_samples=1, sampling_params=params).result().sequences[0]
    text = renderers.get_text_content(renderer.parse_response(seq.tokens)[0])
    check("Zed" in text and "red star" in text, f"sl: the final sampler answers in the trained format: {text!r}")


# ----------------------------------------------------------------------------- rl


def phase_rl(url: str, model: str, work: Path, env: dict[str, str]) -> None:
    import tinker

    log_path = work / "math_rl"
    args: dict[str, object] = {
        "base_url": url,
        "model_name": model,
        "renderer_name": RENDERER,
        "env": "arithmetic",
        "loss_fn": "importance_sampling",
        "log_path": log_path,
        "group_size": 4,
        "groups_per_batch": 2,
        "max_tokens": 8,
        "max_steps": 3,
        "lora_rank": 8,
        "learning_rate": 1e-4,
        "save_every": 2,
        "eval_every": 0,
        "behavior_if_log_dir_exists": "delete",
    }
    run_recipe("tinker_cookbook.recipes.math_rl.train", args, env, work, "rl")
    config = json.loads((log_path / "config.json").read_text())
    check(config.get("loss_fn") == "importance_sampling", "rl: the run trained with loss_fn=importance_sampling")
    rows = metrics(log_path)
    check([r["step"] for r in rows] == [0, 1, 2], "rl: metrics for steps 0..2")
    for r in rows:
        step = r["step"]
        check(r["env/all/total_episodes"] == 8, f"rl step {step}: 2 groups x 4 episodes")
        check(finite(r["env/all/reward/total"]), f"rl step {step}: finite reward {r['env/all/reward/total']:.3f}")
        check(finite(r["optim/entropy"]), f"rl step {step}: finite entropy {r['optim/entropy']:.3f}")
        # The trainer's logprobs of the sampled tokens agree with the sampler's.
        kl = r["optim/kl_sample_train_v1"]
        check(finite(kl) and abs(kl) < 0.01, f"rl step {step}: sampler/trainer KL {kl:.2e}")
        check(finite(r["grad_norm:mean"]), f"rl step {step}: finite grad norm {r['grad_norm:mean']:.3f}")
    records = recorded_checkpoints(log_path)
    names = sorted(r["name"] for r in records)
    check(names == ["000002", "final"], f"rl: checkpoints recorded {names}")
    rest = tinker.RestClient(base_url=url)
    check_listed(rest, records, "rl")


def main() -> None:
    phase, url, model, tokenizer_dir, work = sys.argv[1:6]
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    env = offline_env(work_dir, Path(tokenizer_dir), model)
    from importlib.metadata import version

    print(f"tinker {version('tinker')}, tinker-cookbook {version('tinker-cookbook')}", flush=True)
    {"sl": phase_sl, "rl": phase_rl}[phase](url, model, work_dir, env)
    print(f"PASSED {phase}", flush=True)


if __name__ == "__main__":
    main()

"""Fine-tune a model to speak Pig Latin through the Tinker API, end to end.

This is the project's main job on the embedded default: it starts a
``tinker serve`` in the background (unless ``--base-url`` points at a running
server), fine-tunes ``HuggingFaceTB/SmolLM2-135M-Instruct`` with LoRA through the
public SDK, and shows greedy samples before and after training together with the
``tinker://`` paths of the checkpoints it saved.

    python examples/pig_latin.py                 # what `make demo` runs
    python examples/pig_latin.py --base-url http://127.0.0.1:8000 --steps 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import tinker
from tinker import types
from tinker_server.launch import background_server

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_API_KEY = "tml-local"  # runs belong to the key that made them; the CLI's default key is this one too

# (English, Pig Latin): the training set, and a few held-out prompts to compare.
TRAIN = [
    ("hello world", "ellohay orldway"),
    ("good morning", "oodgay orningmay"),
    ("the cat sat", "ethay atcay atsay"),
    ("open the door", "openway ethay oorday"),
    ("banana split", "ananabay itsplay"),
    ("pig latin is fun", "igpay atinlay isway unfay"),
    ("thank you very much", "ankthay ouyay eryvay uchmay"),
    ("see you later", "eesay ouyay aterlay"),
]
PROMPTS = ["hello world", "banana split", "see you later"]

console = Console(emoji=False)  # run ids like "x:train:0" must print literally


def prompt_text(english: str) -> str:
    return f"English: {english}\nPig Latin:"


def make_datum(tokenizer, english: str, pig_latin: str) -> types.Datum:
    """Prompt tokens get weight 0, completion tokens weight 1; targets are shifted by one."""
    prompt = tokenizer.encode(prompt_text(english), add_special_tokens=False)
    completion = tokenizer.encode(f" {pig_latin}\n", add_special_tokens=False)
    tokens = prompt + completion
    weights = [0.0] * len(prompt) + [1.0] * len(completion)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[len(tokens) - 1]),
            "weights": types.TensorData(data=weights[1:], dtype="float32", shape=[len(weights) - 1]),
        },
    )


def greedy_samples(sampler: tinker.SamplingClient, tokenizer) -> list[str]:
    params = types.SamplingParams(max_tokens=20, temperature=0.0, stop=["\n"])
    futures = [
        sampler.sample(
            types.ModelInput.from_ints(tokenizer.encode(prompt_text(p), add_special_tokens=False)),
            num_samples=1,
            sampling_params=params,
        )
        for p in PROMPTS
    ]
    return [tokenizer.decode(f.result().sequences[0].tokens).strip() for f in futures]


def run(base_url: str, steps: int, rank: int, learning_rate: float) -> str:
    """Train, compare samples, save; returns the training run's id."""
    service = tinker.ServiceClient(base_url=base_url, api_key=os.environ.get("TINKER_API_KEY", DEMO_API_KEY))
    with console.status(f"Loading {BASE_MODEL} and creating a LoRA adapter (rank {rank})..."):
        trainer = service.create_lora_training_client(base_model=BASE_MODEL, rank=rank, seed=0)
        tokenizer = trainer.get_tokenizer()
        before = greedy_samples(service.create_sampling_client(base_model=BASE_MODEL), tokenizer)
    console.print(f"Training run [bold]{trainer.model_id}[/bold] on {len(TRAIN)} examples")

    data = [make_datum(tokenizer, en, pl) for en, pl in TRAIN]
    n_tokens = sum(sum(d.loss_fn_inputs["weights"].data) for d in data)
    losses: list[float] = []
    progress = Progress(
        TextColumn("[bold]SFT"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss/token {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("train", total=steps, loss="   -  ")
        for _ in range(steps):
            fb = trainer.forward_backward(data, "cross_entropy")
            step = trainer.optim_step(types.AdamParams(learning_rate=learning_rate))
            loss = fb.result().metrics["loss:sum"] / n_tokens
            step.result()
            losses.append(loss)
            progress.update(task, advance=1, loss=f"{loss:6.3f}")

    state = trainer.save_state("pig-latin-final").result()
    weights = trainer.save_weights_for_sampler("pig-latin-final").result()
    after = greedy_samples(trainer.save_weights_and_get_sampling_client(), tokenizer)

    table = Table(title="Greedy samples, before and after fine-tuning")
    table.add_column("English")
    table.add_column("before")
    table.add_column("after")
    for prompt, b, a in zip(PROMPTS, before, after, strict=True):
        table.add_row(prompt, b, a, end_section=False)
    console.print(table)
    console.print(f"loss per token: {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps")
    console.print(f"training state : [cyan]{state.path}[/cyan]", soft_wrap=True)  # whole, to copy
    console.print(f"sampler weights: [cyan]{weights.path}[/cyan]", soft_wrap=True)
    assert trainer.model_id is not None  # set once the run is created
    return trainer.model_id


def tinker_command() -> str:
    """How to call our CLI: ``tinker`` when it is on PATH, else the script beside this Python."""
    beside = Path(sys.executable).parent / "tinker"
    on_path = shutil.which("tinker")
    if not beside.exists() or (on_path is not None and Path(on_path).resolve() == beside.resolve()):
        return "tinker"
    return os.path.relpath(beside) if beside.is_relative_to(Path.cwd()) else str(beside)


def show_where_to_look(run_id: str, *, base_url: str | None, home: Path) -> None:
    """The commands that show this run afterwards (the demo's own server stops with it)."""
    tinker_cli = tinker_command()
    options = "" if base_url is None else f" --base-url {base_url}"
    console.print("\nLook at the run afterwards:")
    if base_url is None:
        serve = f"{tinker_cli} serve --home {home.expanduser().resolve()}"
        console.print(
            f"  [bold]{serve}[/bold]   # in another terminal: a server on this home at 127.0.0.1:8000", soft_wrap=True
        )
    console.print(f"  [bold]{tinker_cli} run list{options}[/bold]", soft_wrap=True)
    console.print(f"  [bold]{tinker_cli} checkpoint list --run-id {run_id}{options}[/bold]", soft_wrap=True)
    key_hint = "" if "TINKER_API_KEY" in os.environ else f" (key {DEMO_API_KEY})"
    console.print(
        f"  {(base_url or 'http://127.0.0.1:8000').rstrip('/')}/console{key_hint}   # the web console", soft_wrap=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="use a running server instead of starting one")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("TINKER_HOME", Path.home() / ".tinker")))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    args = parser.parse_args()
    if args.base_url:
        run_id = run(args.base_url, args.steps, args.rank, args.learning_rate)
    else:
        console.print(f"Starting a tinker server in the background (TINKER_HOME={args.home}, log in server.log)...")
        with background_server(args.home, [BASE_MODEL], timeout=300) as url:
            run_id = run(url, args.steps, args.rank, args.learning_rate)
    show_where_to_look(run_id, base_url=args.base_url, home=args.home)


if __name__ == "__main__":
    main()

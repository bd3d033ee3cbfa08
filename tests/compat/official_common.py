"""Shared by the scripts that run inside the official clients' virtualenvs (they import
nothing of this project; Python puts this folder on their path when run by file name)."""

from __future__ import annotations

from tinker import types

__all__ = ["PAIRS", "check", "datum"]

PAIRS = [
    ("hello world", "ellohay orldway"),
    ("good morning", "oodgay orningmay"),
    ("the cat sat", "ethay atcay atsay"),
    ("banana split", "ananabay itsplay"),
]


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}", flush=True)


def datum(tok, english: str, pig: str) -> types.Datum:  # a HF tokenizer
    """An English -> Pig Latin example: loss on the completion tokens only."""
    prompt = tok.encode(f"English: {english}\nPig Latin:", add_special_tokens=False)
    completion = tok.encode(f" {pig}\n", add_special_tokens=False)
    tokens = prompt + completion
    weights = [0.0] * len(prompt) + [1.0] * len(completion)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        # lists: the official client's Datum converts them to TensorData (a before-validator)
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},  # type: ignore[dict-item]
    )

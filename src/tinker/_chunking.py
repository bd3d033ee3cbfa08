"""Splitting forward/forward_backward data into requests, and merging their results.

A chunk holds at most 128 datums and at most 500 000 "numbers" (input tokens
plus loss-input values); a single larger datum still gets a chunk of its own.
Chunk results are merged in order; metrics (``name:reduction`` keys) are
reduced over the keys of the first chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .types import Datum, ForwardBackwardOutput

__all__ = ["MAX_CHUNK_DATUMS", "MAX_CHUNK_NUMBERS", "chunk_data", "merge_outputs", "reduce_metrics"]

MAX_CHUNK_DATUMS = 128
MAX_CHUNK_NUMBERS = 500_000


def _numbers(datum: Datum) -> int:
    return datum.model_input.length + sum(len(t.data) for t in datum.loss_fn_inputs.values())


def chunk_data(data: Sequence[Datum]) -> list[list[Datum]]:
    """Split ``data`` greedily, in order."""
    chunks: list[list[Datum]] = []
    current: list[Datum] = []
    current_numbers = 0
    for datum in data:
        numbers = _numbers(datum)
        if current and (len(current) >= MAX_CHUNK_DATUMS or current_numbers + numbers > MAX_CHUNK_NUMBERS):
            chunks.append(current)
            current, current_numbers = [], 0
        current.append(datum)
        current_numbers += numbers
    if current:
        chunks.append(current)
    return chunks


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    total = sum(weights)
    if total == 0:
        return sum(values) / len(values)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total


def _hash_unordered(values: list[float]) -> float:
    return float(hash(tuple(sorted(values))) % (2**52))


_REDUCERS: dict[str, Callable[[list[float], list[float]], float]] = {
    "mean": _weighted_mean,
    "slack": lambda values, weights: max(values) - _weighted_mean(values, weights),
    "sum": lambda values, weights: sum(values),
    "min": lambda values, weights: min(values),
    "max": lambda values, weights: max(values),
    "hash_unordered": lambda values, weights: _hash_unordered(values),
}


def reduce_metrics(metrics: list[dict[str, float]], weights: list[float]) -> dict[str, float]:
    """Combine per-chunk metrics; ``weights`` (outputs per chunk) weight the means."""
    if not metrics:
        return {}
    merged: dict[str, float] = {}
    for key in metrics[0]:
        parts = key.split(":")
        if len(parts) != 2:
            raise ValueError(f"metric key {key!r} must have the form '<name>:<reduction>'")
        reduction = parts[1]
        if any(key not in m for m in metrics):
            continue
        values = [m[key] for m in metrics]
        if reduction == "unique":
            merged[key] = values[0]
            for i, value in enumerate(values[1:], start=1):
                merged[f"{key}_{i}"] = value
        elif reduction in _REDUCERS:
            merged[key] = _REDUCERS[reduction](values, weights)
    return merged


def merge_outputs(outputs: Sequence[ForwardBackwardOutput]) -> ForwardBackwardOutput:
    """Concatenate chunk results in order and reduce their metrics."""
    if not outputs:
        return ForwardBackwardOutput(loss_fn_output_type="", loss_fn_outputs=[], metrics={})
    return ForwardBackwardOutput(
        loss_fn_output_type=outputs[0].loss_fn_output_type,
        loss_fn_outputs=[o for out in outputs for o in out.loss_fn_outputs],
        metrics=reduce_metrics([o.metrics for o in outputs], [float(len(o.loss_fn_outputs)) for o in outputs]),
    )

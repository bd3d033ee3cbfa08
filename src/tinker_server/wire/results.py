"""Typed results of training and sampling futures, before any encoding.

Services build these from the engine's outputs (:mod:`tinker_server.convert`),
the futures store them, and the HTTP edge answers them as JSON or protobuf
(:mod:`.codec`). Arrays are numpy, in the element types the wire carries:
token ids int32 (int64 for training outputs), logprobs float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["PAD_LOGPROB", "PAD_TOKEN", "SampleResult", "SequenceResult", "TopK", "TrainResult"]

# A top-k cell without a candidate (the clients' convention).
PAD_TOKEN = 0
PAD_LOGPROB = -99999.0


@dataclass(frozen=True, slots=True, eq=False)
class TrainResult:
    """A finished forward or forward_backward.

    ``loss_fn_outputs``: one mapping per datum, in request order, from output name to
    array (float32 or int64); ``logprobs`` has shape (N,) for a datum of N tokens.
    ``metrics``: keys ``"name:reduction"``.
    """

    loss_fn_output_type: str
    loss_fn_outputs: list[dict[str, np.ndarray]]
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True, eq=False)
class TopK:
    """The best candidates at N positions: ``token_ids`` int32 and ``logprobs`` float32,
    both [N, K], best first. Cells past a position's candidates are padding
    (:data:`PAD_TOKEN`, :data:`PAD_LOGPROB`); a position without data is all padding."""

    token_ids: np.ndarray
    logprobs: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[tuple[int, float]] | None]) -> TopK:
        """From one list of ``(token_id, logprob)`` pairs per position (``None``: no data)."""
        k = max((len(row) for row in rows if row is not None), default=0)
        ids = np.full((len(rows), k), PAD_TOKEN, dtype=np.int32)
        logprobs = np.full((len(rows), k), PAD_LOGPROB, dtype=np.float32)
        for i, row in enumerate(rows):
            if row:
                pairs = np.asarray(row, dtype=np.float64).reshape(len(row), 2)
                ids[i, : len(row)] = pairs[:, 0]
                logprobs[i, : len(row)] = pairs[:, 1]
        return cls(ids, logprobs)

    def rows(self) -> list[list[tuple[int, float]] | None]:
        """The inverse of :meth:`from_rows`: trailing padding dropped, all-padding rows ``None``."""
        pad = (self.token_ids == PAD_TOKEN) & (self.logprobs == np.float32(PAD_LOGPROB))
        out: list[list[tuple[int, float]] | None] = []
        for ids, logprobs, is_pad in zip(self.token_ids.tolist(), self.logprobs.tolist(), pad.tolist(), strict=False):
            n = len(ids)
            while n and is_pad[n - 1]:
                n -= 1
            out.append(None if not ids or is_pad[0] else list(zip(ids[:n], logprobs[:n], strict=False)))
        return out


@dataclass(frozen=True, slots=True, eq=False)
class SequenceResult:
    """One sampled continuation: ``tokens`` int32 (T,), ``logprobs`` float32 (T,).
    ``topk_logprobs`` [T, k] when top-k sampled logprobs were asked for."""

    tokens: np.ndarray
    logprobs: np.ndarray
    stop_reason: Literal["stop", "length"]
    sequence_id: str | None = None
    topk_logprobs: TopK | None = None


@dataclass(frozen=True, slots=True, eq=False)
class SampleResult:
    """A finished sampling request; ``sequences`` in the order of its sequence ids.

    Per prompt position (P = prompt length), when asked for: ``prompt_logprobs``
    float32 (P,), NaN where not computed (always the first); ``topk_prompt_logprobs``
    [P, K]. ``target_prompt_logprobs`` float32 [P - 1, K]; ``prompt_alt_tokens``
    ``(ids int32, logprobs float32)``, both [P - 1, k].
    """

    sequences: list[SequenceResult]
    prompt_logprobs: np.ndarray | None = None
    topk_prompt_logprobs: TopK | None = None
    target_prompt_logprobs: np.ndarray | None = None
    prompt_alt_tokens: tuple[np.ndarray, np.ndarray] | None = None

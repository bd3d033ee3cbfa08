"""Training datums held as numpy arrays, for bodies decoded from protobuf.

A JSON forward/forward_backward body becomes :class:`~.tensor.Datum` objects
whose numbers are Python lists. A protobuf body is decoded straight into the
classes here: token runs and tensors are numpy arrays over the request's bytes,
so a large batch is never turned into millions of Python numbers. The training
service takes either form (:func:`tinker_server.convert.train_data` applies the
same checks, with the same messages, to both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .model_input import DmelChunk, ImageChunk

__all__ = ["ArrayChunk", "ArrayDatum", "ArrayTensor", "ProvenanceSpan", "dense_from_csr"]

# A text chunk's token ids (a 1-D integer array), or a chunk kind the engine does not take.
ArrayChunk = np.ndarray | ImageChunk | DmelChunk


@dataclass(frozen=True, slots=True, eq=False)
class ArrayTensor:
    """A dense tensor: ``array`` has its final shape; ``dtype`` names the element type it
    was sent in (``float32``, ``int64``, ``int32`` or ``bfloat16``; bfloat16 arrives
    widened to float32)."""

    array: np.ndarray
    dtype: str


@dataclass(frozen=True, slots=True)
class ProvenanceSpan:
    """``length`` tokens of a datum that came from sequence ``sequence_id`` of an earlier
    sample, starting at ``offset`` in its prompt (``source="prompt"``) or in its sampled
    tokens (``source="sampled"``)."""

    source: Literal["prompt", "sampled"]
    sequence_id: str
    offset: int
    length: int


class ArrayDatum:
    """One training example: the model input's chunks in order, and the loss inputs.

    The provenance spans (sent with ``stable_reinforce`` data) are kept as they came;
    nothing uses them yet. A plain class rather than a dataclass so that pydantic,
    which sees it inside :class:`~.training.ForwardBackwardInput`, checks only its type.
    """

    __slots__ = ("chunks", "loss_fn_input_spans", "loss_fn_inputs", "model_input_spans")

    def __init__(
        self,
        chunks: Sequence[ArrayChunk],
        loss_fn_inputs: dict[str, ArrayTensor],
        *,
        model_input_spans: Sequence[ProvenanceSpan] = (),
        loss_fn_input_spans: Sequence[ProvenanceSpan] = (),
    ) -> None:
        self.chunks = list(chunks)
        self.loss_fn_inputs = loss_fn_inputs
        self.model_input_spans = tuple(model_input_spans)
        self.loss_fn_input_spans = tuple(loss_fn_input_spans)

    def __repr__(self) -> str:
        sizes = [c.size if isinstance(c, np.ndarray) else c.type for c in self.chunks]
        return f"ArrayDatum(chunks={sizes}, loss_fn_inputs={sorted(self.loss_fn_inputs)})"


def dense_from_csr(
    values: np.ndarray, crow_indices: np.ndarray, col_indices: np.ndarray, shape: Sequence[int]
) -> np.ndarray:
    """The dense 2-D array of a compressed-sparse-row tensor.

    ``crow_indices`` has ``rows + 1`` non-decreasing entries from 0 to ``nnz``;
    row ``r`` holds ``values[crow[r]:crow[r + 1]]`` at columns
    ``col_indices[crow[r]:crow[r + 1]]``. Raises :class:`ValueError` with a sentence
    when the parts do not fit together.
    """
    if len(shape) != 2:
        raise ValueError(f"a sparse (CSR) tensor must be 2-D, got shape {list(shape)}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 0 or cols < 0:
        raise ValueError(f"shape {list(shape)} has a negative dimension")
    nnz = values.shape[0]
    if crow_indices.shape[0] != rows + 1:
        raise ValueError(f"crow_indices has {crow_indices.shape[0]} entries; a {rows}-row tensor needs {rows + 1}")
    if col_indices.shape[0] != nnz:
        raise ValueError(f"col_indices has {col_indices.shape[0]} entries but there are {nnz} values")
    if crow_indices[0] != 0 or crow_indices[-1] != nnz or np.any(np.diff(crow_indices) < 0):
        raise ValueError(f"crow_indices must rise from 0 to the number of values ({nnz}) without decreasing")
    if nnz and (int(col_indices.min()) < 0 or int(col_indices.max()) >= cols):
        raise ValueError(f"col_indices must lie in 0..{cols - 1}")
    dense = np.zeros((rows, cols), dtype=values.dtype)
    row_of = np.repeat(np.arange(rows), np.diff(crow_indices))
    dense[row_of, col_indices] = values
    return dense

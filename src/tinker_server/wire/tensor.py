"""Tensors in JSON bodies, and the training datum built from them."""

from __future__ import annotations

from typing import Any, Literal

from ._base import Int64, NonNegativeDims, StrictRequest
from .model_input import ModelInput

__all__ = ["Datum", "TensorData", "TensorDtype"]

TensorDtype = Literal["int64", "float32"]


class TensorData(StrictRequest):
    """A row-major tensor: ``data`` and ``dtype``, ``shape`` optional (absent → 1-D).

    0.18+ may send a 2-D tensor in CSR form: ``data`` then holds the non-zero
    values, ``sparse_crow_indices`` (rows + 1 entries) and ``sparse_col_indices``
    (one per value) say where they go.
    """

    omit_if_none = frozenset({"sparse_crow_indices", "sparse_col_indices"})

    data: list[int] | list[float]
    dtype: TensorDtype
    shape: NonNegativeDims | None = None
    sparse_crow_indices: list[Int64] | None = None
    sparse_col_indices: list[Int64] | None = None


class Datum(StrictRequest):
    """One training example: input tokens and the loss function's per-token inputs.
    ``model_input_spans`` / ``loss_fn_input_spans`` (0.38's provenance) are accepted and unused."""

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData]
    model_input_spans: Any = None
    loss_fn_input_spans: Any = None

"""Tensors in JSON bodies, and the training datum built from them."""

from __future__ import annotations

from typing import Literal

from ._base import Request
from .model_input import ModelInput

__all__ = ["Datum", "TensorData", "TensorDtype"]

TensorDtype = Literal["int64", "float32"]


class TensorData(Request):
    """A row-major tensor: ``data`` and ``dtype``, ``shape`` optional (absent → 1-D).

    0.18+ may send a 2-D tensor in CSR form: ``data`` then holds the non-zero
    values, ``sparse_crow_indices`` (rows + 1 entries) and ``sparse_col_indices``
    (one per value) say where they go.
    """

    omit_if_none = frozenset({"sparse_crow_indices", "sparse_col_indices"})

    data: list[int] | list[float]
    dtype: TensorDtype
    shape: list[int] | None = None
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None


class Datum(Request):
    """One training example: input tokens and the loss function's per-token inputs."""

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData]

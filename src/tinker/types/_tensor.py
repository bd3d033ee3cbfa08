"""Tensors on the wire, and the training datum built from them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pydantic

from ._base import StrictBase
from ._model_input import ModelInput

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["Datum", "LossFnInputs", "LossFnOutput", "TensorData", "TensorDtype"]

TensorDtype = Literal["int64", "float32"]

# dtype of a plain list given under each key the SDK knows; any other key is a KeyError.
_LIST_KEY_DTYPES: dict[str, TensorDtype] = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
}


class TensorData(StrictBase):
    """A flattened (row-major) tensor: ``data``, ``dtype`` and optional ``shape``.

    Without ``shape`` the tensor is 1-D of length ``len(data)``. Responses use
    the same strict model: extra keys inside a tensor are a validation error.
    """

    data: list[int] | list[float]
    dtype: TensorDtype
    shape: list[int] | None = None

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> TensorData:
        kind = array.dtype.kind
        if kind == "f":
            dtype: TensorDtype = "float32"
        elif kind == "i":
            dtype = "int64"
        else:
            raise ValueError(f"unsupported numpy dtype {array.dtype}: expected a float or signed integer array")
        return cls(data=array.reshape(-1).tolist(), dtype=dtype, shape=list(array.shape))

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> TensorData:
        dtype: TensorDtype = "float32" if tensor.is_floating_point() else "int64"
        flat = tensor.detach().cpu().reshape(-1)
        return cls(data=flat.tolist(), dtype=dtype, shape=list(tensor.shape))

    def to_numpy(self) -> np.ndarray:
        import numpy as np

        array = np.asarray(self.data, dtype=np.float32 if self.dtype == "float32" else np.int64)
        return array.reshape(self.shape) if self.shape is not None else array

    def to_torch(self) -> torch.Tensor:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("TensorData.to_torch() needs torch: pip install torch") from exc
        return torch.from_numpy(self.to_numpy())

    def tolist(self) -> list[Any]:
        result: list[Any] = self.to_numpy().tolist()
        return result


LossFnInputs = dict[str, TensorData]
LossFnOutput = dict[str, TensorData]


def _as_tensor_data(key: str, value: Any) -> Any:
    if isinstance(value, (TensorData, dict)):
        return value
    if isinstance(value, list):
        return TensorData(data=value, dtype=_LIST_KEY_DTYPES[key], shape=[len(value)])
    module = type(value).__module__
    if module.startswith("numpy"):
        return TensorData.from_numpy(value)
    if module.startswith("torch"):
        return TensorData.from_torch(value)
    return value


class Datum(StrictBase):
    """One training example: the input tokens and the loss function's per-token inputs."""

    model_input: ModelInput
    loss_fn_inputs: LossFnInputs

    @pydantic.model_validator(mode="before")
    @classmethod
    def _convert_inputs(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("loss_fn_inputs"), dict):
            converted = {k: _as_tensor_data(k, v) for k, v in values["loss_fn_inputs"].items()}
            values = {**values, "loss_fn_inputs": converted}
        return values
